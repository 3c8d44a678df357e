"""CSV and Parquet by schema: vocabularies, hashing, multi-valued fields, schema errors."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ncs.data import DataError, encode_table, load_table, stats
from ncs.data.vocab import hash_bucket

ROWS = [
    # user_id, video, tags, clicked, play_rate, req_id, age
    ("u1", "v1", "a|b|c", 1, 0.5, "r1", "3"),
    ("u2", "v2", "", 0, "", "r1", ""),
    ("u1", "v3", "b|-1|d|e", 1, 1.0, "r2", "4"),
    ("u3", "v1", "-1", 0, 0, "r3", "-1"),
]
SCHEMA = {
    "fields": [
        {"name": "uid", "column": "user_id", "vocab": "auto"},
        {"name": "vid", "column": "video", "vocab": None, "hash_buckets": 7},
        {"name": "tags", "multi": True, "sep": "|", "max_len": 3},
        {"name": "age", "vocab": ["3", "4"]},
    ],
    "click": "clicked",
    "conversion": "play_rate",
    "conversion_type": "continuous",
    "groups": {"request": "req_id", "user": "user_id"},
}


def write_csv(path, rows=ROWS, header="user_id,video,tags,clicked,play_rate,req_id,age"):
    lines = [header] + [",".join(str(x) for x in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def check_encoding(d):
    assert [f.name for f in d.fields] == ["uid", "vid", "tags", "age"]
    assert [f.max_len for f in d.fields] == [1, 1, 3, 1]
    assert [f.vocab_size for f in d.fields] == [4, 8, 5, 3]
    assert d.ids.shape == (4, 4, 3)
    assert d.ids[:, 0, 0].tolist() == [1, 2, 1, 3]
    assert d.ids[:, 1, 0].tolist() == [hash_bucket(v, 7) for v in ("v1", "v2", "v3", "v1")]
    assert d.ids[:, 2].tolist() == [[1, 2, 3], [0, -1, -1], [2, 0, 4], [0, -1, -1]]
    assert d.ids[:, 3, 0].tolist() == [1, 0, 2, 0]
    assert bool((d.ids[:, [0, 1, 3], 1:] == -1).all())
    assert d.labels["click"].tolist() == [1, 0, 1, 0]
    assert d.labels["conversion"].tolist() == [0.5, 0, 1.0, 0]
    req = d.groups["request"]
    assert req[0] == req[1] and len(set(req.tolist())) == 3
    assert d.groups["user"][0] == d.groups["user"][2]


def test_csv(tmp_path):
    d, vocab = encode_table(write_csv(tmp_path / "a.csv"), SCHEMA)
    check_encoding(d)
    assert vocab["uid"] == {"u1": 1, "u2": 2, "u3": 3}
    assert vocab["tags"] == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert "vid" not in vocab  # hashed fields have no vocabulary


def test_csv_small_batches_same_result(tmp_path):
    p = write_csv(tmp_path / "a.csv")
    d1 = load_table(p, SCHEMA)
    d2, _ = encode_table(p, SCHEMA, batch_rows=1)
    assert torch.equal(d1.ids, d2.ids)


def test_parquet_strings_and_lists(tmp_path):
    cols = list(zip(*ROWS))
    t = pa.table({
        "user_id": list(cols[0]), "video": list(cols[1]),
        "tags": [s.split("|") if s else None for s in cols[2]],  # a native list column
        "clicked": [int(x) for x in cols[3]],
        "play_rate": [float(x) if x != "" else None for x in cols[4]],
        "req_id": list(cols[5]), "age": [int(x) if x else None for x in cols[6]],  # ints -> "3"
    })
    p = tmp_path / "a.parquet"
    pq.write_table(t, p, row_group_size=2)
    d, _ = encode_table(p, SCHEMA, batch_rows=2)
    check_encoding(d)


def test_fixed_vocab_argument(tmp_path):
    d = load_table(write_csv(tmp_path / "a.csv"), SCHEMA, vocab={"uid": {"u3": 1}})
    assert d.ids[:, 0, 0].tolist() == [0, 0, 0, 1]
    assert d.fields[0].vocab_size == 2


def test_schema_from_yaml_and_json(tmp_path):
    p = write_csv(tmp_path / "a.csv")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SCHEMA))
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    check_encoding(load_table(p, str(tmp_path / "s.yaml")))
    check_encoding(load_table(p, str(tmp_path / "s.json")))


def test_binary_conversion_and_no_conversion(tmp_path):
    p = write_csv(tmp_path / "b.csv", [("u1", "v", "a", 1, 1, "r", "3"), ("u2", "v", "a", 0, 0, "r", "3")])
    d = load_table(p, dict(SCHEMA, conversion_type="binary"))
    assert d.labels["conversion"].tolist() == [1, 0]
    with pytest.raises(DataError, match=r"row 0: column 'play_rate' must be 0 or 1"):
        load_table(write_csv(tmp_path / "c.csv"), dict(SCHEMA, conversion_type="binary"))
    d = load_table(p, {k: v for k, v in SCHEMA.items() if k not in ("conversion", "conversion_type")})
    assert d.labels["conversion"].tolist() == [0, 0]


def test_bad_values_name_the_row(tmp_path):
    rows = list(ROWS)
    rows[2] = ("u1", "v3", "x", 2, 0.5, "r2", "4")
    with pytest.raises(DataError, match=r"bad\.csv: row 2: column 'clicked' must be 0 or 1"):
        load_table(write_csv(tmp_path / "bad.csv", rows), SCHEMA)
    rows[2] = ("u1", "v3", "x", 1, 1.5, "r2", "4")
    with pytest.raises(DataError, match=r"row 2: column 'play_rate' must be in \[0, 1\]"):
        load_table(write_csv(tmp_path / "bad.csv", rows), SCHEMA)
    rows[2] = ("u1", "v3", "x", "", 0.5, "r2", "4")
    with pytest.raises(DataError, match=r"row 2: column 'clicked' is empty"):
        load_table(write_csv(tmp_path / "bad.csv", rows), SCHEMA)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda s: s["fields"][0].update(colour="red"), r"fields\[0\] \(uid\): unknown keys \['colour'\]"),
    (lambda s: s.pop("click"), "'click' must name"),
    (lambda s: s.update(fields=[]), "'fields' must be a non-empty list"),
    (lambda s: s["fields"][1].update(vocab="auto"), "either vocab or hash_buckets"),
    (lambda s: s["fields"][1].update(hash_buckets=0), "hash_buckets must be an int >= 1"),
    (lambda s: s["fields"][0].update(vocab="sometimes"), "vocab must be 'auto' or a list"),
    (lambda s: s["fields"][0].update(max_len=4), "max_len must be"),
    (lambda s: s.update(conversion_type="ordinal"), "conversion_type"),
    (lambda s: s["fields"].append({"name": "uid"}), "appears twice"),
])
def test_schema_errors(tmp_path, mutate, message):
    schema = json.loads(json.dumps(SCHEMA))
    mutate(schema)
    with pytest.raises(DataError, match=message):
        load_table(write_csv(tmp_path / "a.csv"), schema)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_missing_columns_are_named(tmp_path, fmt):
    schema = json.loads(json.dumps(SCHEMA))
    schema["fields"][0]["column"] = "userid"
    schema["groups"]["request"] = "request"
    if fmt == "csv":
        p = write_csv(tmp_path / "a.csv")
    else:
        p = tmp_path / "a.parquet"
        pq.write_table(pa.table({"user_id": ["u"], "clicked": [1]}), p)
    with pytest.raises(DataError, match=r"missing columns \[.*'userid'.*'request'"):
        load_table(p, schema)


def test_schema_file_errors(tmp_path):
    p = write_csv(tmp_path / "a.csv")
    (tmp_path / "bad.yaml").write_text("fields: [unclosed\n")
    with pytest.raises(DataError, match=r"bad\.yaml: not valid YAML"):
        load_table(p, str(tmp_path / "bad.yaml"))
    with pytest.raises(DataError, match="cannot read"):
        load_table(p, str(tmp_path / "none.yaml"))


def test_table_stats(tmp_path):
    p = write_csv(tmp_path / "a.csv")
    s = stats(p, schema=SCHEMA)
    assert s == {"rows": 4, "clicks": 2, "conversions": 2, "conversion_mean": 0.75, "click_rate": 0.5,
                 "fields": 4, "corrupt_records": 0}
    s2 = stats(p)  # guesses the label columns by name
    assert s2["rows"] == 4 and s2["clicks"] == 2 and s2["conversion_mean"] == 0.75
