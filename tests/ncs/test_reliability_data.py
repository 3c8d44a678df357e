"""The corpus of bad inputs (generated here into tmp dirs): every reader names the file, row and
column in one DataError; on_bad_row: skip drops and counts; the CLI answers in one line, exit 2."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ncs import cli
from ncs.data import DataError, encode_lt4rec, encode_table, load_dataset, stats
from test_data_tfrecord import example, write_records

HEADER = "uid,vid,clicked,play_rate,req"
GOOD = ["u1,v1,1,0.5,r1", "u2,v2,0,0,r1", "u3,v1,1,1,r2", "u1,v3,0,,r3"]
SCHEMA = {"fields": [{"name": "uid"}, {"name": "vid"}], "click": "clicked", "conversion": "play_rate",
          "groups": {"request": "req"}}

# (name, bad row 2, expected message): row numbers count data rows from 0 (the header is not a row)
CSV_CASES = [
    # CSV: NaN / NA text is a null marker (pyarrow's), like an empty field
    ("conv_nan_clicked", "u9,v9,1,nan,r9", r"row 2: column 'play_rate' is empty \(or a null marker.*\) on a clicked row"),
    ("conv_empty_clicked", "u9,v9,1,,r9", r"row 2: column 'play_rate' is empty \(or a null marker.*\) on a clicked row"),
    ("conv_inf", "u9,v9,1,inf,r9", r"row 2: column 'play_rate' must be in \[0, 1\], got inf"),
    ("click_nan", "u9,v9,NaN,0,r9", r"row 2: column 'clicked' is empty \(or a null marker"),
    ("click_empty", "u9,v9,,0,r9", r"row 2: column 'clicked' is empty"),
    ("click_text", "u9,v9,yes,0,r9", r"row 2: column 'clicked' must be 0 or 1, got 'yes' \(not a number\)"),
    ("click_range", "u9,v9,2,0,r9", r"row 2: column 'clicked' must be 0 or 1, got 2.0"),
    ("conv_range", "u9,v9,1,1.5,r9", r"row 2: column 'play_rate' must be in \[0, 1\], got 1.5"),
    ("conv_negative", "u9,v9,1,-0.1,r9", r"row 2: column 'play_rate' must be in \[0, 1\], got -0.1"),
    ("conv_on_nonclick", "u9,v9,0,0.3,r9", r"row 2: column 'play_rate' is 0.3 > 0 on a row whose click column 'clicked' is 0"),
    ("ragged_short", "u9,v9,1", r"row 2: 3 fields, the header has 5"),
    ("ragged_long", "u9,v9,1,0,r9,extra", r"row 2: 6 fields, the header has 5"),
]


def _csv(path, bad_row=None, raw=None):
    if raw is not None:
        path.write_bytes(raw)
        return path
    rows = list(GOOD)
    if bad_row is not None:
        rows.insert(2, bad_row)
    path.write_text("\n".join([HEADER] + rows) + "\n")
    return path


@pytest.mark.parametrize("name,row,message", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_bad_row_is_named_or_skipped(tmp_path, name, row, message):
    p = _csv(tmp_path / f"{name}.csv", row)
    with pytest.raises(DataError, match=rf"{name}\.csv: " + message):
        encode_table(p, SCHEMA)
    counts = {}
    data, _ = encode_table(p, SCHEMA, on_bad_row="skip", stats=counts)
    assert counts["bad_rows"] == 1 and len(data) == len(GOOD)
    assert data.labels["click"].tolist() == [1, 0, 1, 0]


def test_bad_utf8_in_an_id_column(tmp_path):
    raw = ("\n".join([HEADER] + GOOD[:2]) + "\n").encode() + b"u\xff\xfe,v9,1,0.5,r9\n" + (GOOD[2] + "\n").encode()
    p = _csv(tmp_path / "utf8.csv", raw=raw)
    with pytest.raises(DataError, match=r"utf8\.csv: row 2: column 'uid' holds bytes that are not valid UTF-8"):
        encode_table(p, SCHEMA)
    counts = {}
    assert len(encode_table(p, SCHEMA, on_bad_row="skip", stats=counts)[0]) == 3 and counts["bad_rows"] == 1


def test_empty_header_only_and_all_skipped(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        encode_table(_csv(tmp_path / "empty.csv", raw=b""), SCHEMA)
    with pytest.raises(DataError, match=r"header\.csv: no data rows"):
        encode_table(_csv(tmp_path / "header.csv", raw=(HEADER + "\n").encode()), SCHEMA)
    p = _csv(tmp_path / "allbad.csv", raw=(HEADER + "\nu,v,7,0,r\nu,v,,0,r\n").encode())
    with pytest.raises(DataError, match=r"allbad\.csv: no rows left after skipping 2 bad rows"):
        encode_table(p, SCHEMA, on_bad_row="skip")
    with pytest.raises(DataError, match="on_bad_row: expected one of error, skip"):
        encode_table(_csv(tmp_path / "ok.csv"), SCHEMA, on_bad_row="ignore")


def test_parquet_bad_values(tmp_path):
    cols = {"uid": ["a", "b", "c"], "vid": ["x", "y", "z"], "clicked": [1.0, 0.0, float("nan")],
            "play_rate": [0.5, 0.0, 0.0], "req": ["r1", "r2", "r3"]}
    pq.write_table(pa.table(cols), tmp_path / "nan.parquet")
    with pytest.raises(DataError, match=r"nan\.parquet: row 2: column 'clicked' must be 0 or 1, got nan"):
        encode_table(tmp_path / "nan.parquet", SCHEMA)
    cols["clicked"] = [1.0, 0.0, 1.0]
    cols["uid"] = pa.array([b"a", b"\xff", b"c"], pa.binary())
    pq.write_table(pa.table(cols), tmp_path / "bin.parquet")
    with pytest.raises(DataError, match=r"bin\.parquet: row 1: column 'uid' holds bytes that are not valid UTF-8"):
        encode_table(tmp_path / "bin.parquet", SCHEMA)
    pq.write_table(pa.table({k: v[:0] for k, v in cols.items()}), tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none\.parquet: no data rows"):
        encode_table(tmp_path / "none.parquet", SCHEMA)


def _rec(click, conv, uid=b"u1", **extra):
    feats = {"label": [float(click)], "cvrlabel": [float(conv)], "FEA_UID": [uid], "seqnum": [b"s"]}
    feats.update(extra)
    return example(feats)


@pytest.mark.parametrize("bad,message", [
    (_rec(1, float("nan")), r"record 2: column 'cvrlabel' must be in \[0, 1\], got nan"),
    (_rec(float("inf"), 0), r"record 2: column 'label' must be 0 or 1, got inf"),
    (_rec(0, 0.4), r"record 2: column 'cvrlabel' is 0.4.* > 0 on a row whose click column 'label' is 0"),
    (_rec(1, 2.0), r"record 2: column 'cvrlabel' must be in \[0, 1\], got 2.0"),
    (_rec(1, 0.5, uid=b"\xc3\x28"), r"record 2: column 'FEA_UID' holds bytes that are not valid UTF-8"),
    (example({"cvrlabel": [0.0], "FEA_UID": [b"u"]}), r"record 2: column 'label' is missing"),
], ids=["conv_nan", "click_inf", "conv_on_nonclick", "conv_range", "bad_utf8", "no_label"])
def test_tfrecord_bad_record(tmp_path, bad, message):
    good = [_rec(1, 0.5), _rec(0, 0), _rec(1, 1.0)]
    p = tmp_path / "bad.tfrecord"
    write_records(p, good[:2] + [bad] + good[2:])
    with pytest.raises(DataError, match=r"bad\.tfrecord: " + message):
        encode_lt4rec(p)
    counts = {}
    data, _ = encode_lt4rec(p, on_bad_row="skip", stats=counts)
    assert counts["bad_rows"] == 1 and data.labels["click"].tolist() == [1, 0, 1]


def test_tfrecord_empty_file(tmp_path):
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.tfrecord: no data records"):
        encode_lt4rec(tmp_path / "empty.tfrecord")
    write_records(tmp_path / "allbad.tfrecord", [_rec(3, 0)])
    with pytest.raises(DataError, match=r"allbad\.tfrecord: no records left after skipping 1 bad records"):
        encode_lt4rec(tmp_path / "allbad.tfrecord", on_bad_row="skip")


def test_load_dataset_option_and_cache_keep_the_count(tmp_path):
    p = _csv(tmp_path / "d.csv", CSV_CASES[0][1])
    cfg = {"kind": "csv", "path": str(p), "schema": SCHEMA, "on_bad_row": "skip"}
    for _ in range(2):  # built, then from the cache
        counts = {}
        assert len(load_dataset(cfg, cache_dir=str(tmp_path / "cache"), stats=counts)) == 4
        assert counts["bad_rows"] == 1
    with pytest.raises(DataError, match="row 2"):
        load_dataset(dict(cfg, on_bad_row="error"))


def _one_line(capsys, rc, *needles):
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_data_stats_on_malformed_files(tmp_path, capsys):
    """`ncs data stats` on a malformed CSV is one line, exit 2 (it used to be a pyarrow traceback)."""
    rag = _csv(tmp_path / "rag.csv", "u9,v9")
    _one_line(capsys, cli.main(["data", "stats", str(rag)]), "rag.csv: row 2: 2 fields, the header has 5")
    bad = _csv(tmp_path / "bad.csv", raw=(HEADER + "\nu,v,1,x,r\n").encode())
    _one_line(capsys, cli.main(["data", "stats", str(bad)]), "bad.csv: row 0: column 'play_rate'")
    _one_line(capsys, cli.main(["data", "stats", str(_csv(tmp_path / "e.csv", raw=b""))]), "e.csv: empty file")
    assert cli.main(["data", "stats", str(rag), "--skip-corrupt"]) == 0
    s = json.loads(capsys.readouterr()[0])
    assert s["rows"] == 4 and s["bad_rows"] == 1
    assert stats(_csv(tmp_path / "ok.csv"))["rows"] == 4


def test_cli_train_on_bad_data(tmp_path, capsys):
    """A conversion label NaN on a clicked row used to train without a word; a header-only CSV
    used to 'succeed' on zero rows: now both exit 2 in one line; skip records the count."""
    import yaml

    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA))
    rows = [f"u{i % 7},v{i % 5},{i % 2},{0.5 * (i % 2)},r{i // 3}" for i in range(60)]
    rows[7] = "u1,v1,1,nan,r2"
    data = tmp_path / "d.csv"
    data.write_text("\n".join([HEADER] + rows) + "\n")

    def cfg(path, **opts):
        c = {"seed": 0, "device": "cpu", "backend": "torch", "threads": 1, "models": ["single"],
             "data": {"kind": "csv", "path": str(path), "options": {"schema": str(schema), **opts}},
             "model": {"embed_dim": 2, "hidden": [4]}, "train": {"batch_size": 16},
             "stages": {"warmup": {"epochs": 1}, "joint": {"epochs": 0}}}
        f = tmp_path / f"c{len(opts)}{path.stem}.yaml"
        f.write_text(yaml.safe_dump(c))
        return str(f)

    rc = cli.main(["train", "--config", cfg(data), "--out", str(tmp_path / "r1"), "-q"])
    _one_line(capsys, rc, "d.csv: row 7: column 'play_rate' is empty (or a null marker")
    header = tmp_path / "h.csv"
    header.write_text(HEADER + "\n")
    _one_line(capsys, cli.main(["train", "--config", cfg(header), "--out", str(tmp_path / "r2"), "-q"]),
              "h.csv: no data rows")
    rc = cli.main(["train", "--config", cfg(data, on_bad_row="skip"), "--out", str(tmp_path / "r3"), "-q"])
    assert rc == 0, capsys.readouterr()
    split = json.loads((tmp_path / "r3" / "split.json").read_text())
    assert split["skipped_bad_rows"] == 1
