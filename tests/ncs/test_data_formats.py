"""ncs.data.formats: the one place that tells a data file's format from its name, and its users."""
from __future__ import annotations

from pathlib import Path

import pytest

import ncs.data as D
from ncs.data.formats import FORMATS, SOURCE_FORMATS, SUFFIXES, detect, is_config, is_table

CASES = [
    ("ids.safetensors", "encoded"), ("X.SAFETENSORS", "encoded"),
    ("day.parquet", "parquet"), ("day.PQ", "parquet"), ("dir.v2/day.parquet", "parquet"),
    ("t.csv", "csv"), ("t.csv.gz", "csv"), ("t.TSV", "csv"), ("T.Csv.Gz", "csv"),
    ("part-r-00002.gz", "tfrecord"), ("part-r-00002", "tfrecord"), ("a.tfrecord", "tfrecord"),
    ("t.csv.bak", "tfrecord"), ("parquet", "tfrecord"), ("t.gz.csv.txt", "tfrecord"),
]


@pytest.mark.parametrize("name,want", CASES)
def test_detect_by_suffix(name, want):
    assert detect(name) == want
    assert detect(Path(name)) == want  # os.PathLike too
    assert is_table(name) == (want in ("csv", "parquet"))


def test_every_suffix_maps_to_its_format():
    for fmt, sfx in SUFFIXES.items():
        assert fmt in FORMATS
        for s in sfx:
            assert detect("a" + s) == fmt and detect("a" + s.upper()) == fmt


def test_explicit_kind_wins_and_is_checked():
    assert detect("t.csv", kind="tfrecord") == "tfrecord"
    assert detect("anything", kind="parquet", accept=SOURCE_FORMATS) == "parquet"
    with pytest.raises(D.DataError, match=r"data\.bin: format must be one of \['tfrecord', 'csv', 'parquet'\], "
                                          r"got 'json'"):
        detect("data.bin", kind="json", accept=SOURCE_FORMATS)


def test_a_format_the_caller_cannot_read_names_the_file_and_the_accepted_ones():
    with pytest.raises(D.DataError) as e:
        detect("/x/ids.safetensors", accept=SOURCE_FORMATS)
    msg = str(e.value)
    assert msg.startswith("/x/ids.safetensors: the encoded format by its name")
    for fmt in SOURCE_FORMATS:
        assert fmt in msg
    assert ".parquet .pq" in msg and ".csv .csv.gz .tsv" in msg and "any other name" in msg
    assert detect("/x/ids.safetensors") == "encoded"  # every format is accepted by default


def test_is_config():
    assert is_config("c.yaml") and is_config("C.YML") and is_config(Path("a/b.yaml"))
    assert not is_config("c.json") and not is_config("yaml") and not is_config("c.yaml.gz")


def test_users_agree_with_detect():
    from ncs.serve.encode import file_kind

    for name, want in CASES:
        assert file_kind(name) == want


def test_convert_refuses_an_encoded_file_naming_it(tmp_path):
    from ncs.data.convert import convert

    f = tmp_path / "ids.safetensors"
    D.save_encoded(D.synthetic(rows=50, seed=0), str(f))
    with pytest.raises(D.DataError, match=r"ids\.safetensors: the encoded format by its name; expected one of "
                                          r"\['tfrecord', 'csv', 'parquet'\]"):
        convert([str(f)], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(D.DataError, match=r"convert: format must be tfrecord, csv or parquet, got 'json'"):
        convert([str(f)], str(tmp_path / "out"), fmt="json")


def test_stats_reads_by_detected_format(tmp_path):
    data = D.synthetic(rows=120, seed=1)
    enc = tmp_path / "D.SAFETENSORS"  # upper case: still the encoded format
    D.save_encoded(data, str(enc))
    assert D.stats(str(enc)) == D.stats(data)
    csv = tmp_path / "t.TSV"
    csv.write_text("click,conversion,user\n1,0.5,a\n0,0,b\n1,1,a\n")
    s = D.stats(str(csv))
    assert (s["rows"], s["clicks"], s["fields"]) == (3, 2, 1)


def test_cli_data_commands_use_detect(tmp_path, capsys):
    import json

    from ncs import cli

    f = tmp_path / "ids.safetensors"
    D.save_encoded(D.synthetic(rows=60, seed=2), str(f))
    assert cli.main(["data", "convert", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ids.safetensors: the encoded format by its name" in err
    up = tmp_path / "IDS.SAFETENSORS"  # `ncs data stats`: encoded by its name, whatever the case
    f.rename(up)
    assert cli.main(["data", "stats", str(up)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 60
