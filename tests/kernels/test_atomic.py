"""ncs_kernels.atomic: the one atomic-write helper every writer in the project uses."""
import json
import os

import pytest

from ncs_kernels.atomic import atomic_path, atomic_write_json, atomic_write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write_json(p, {"b": 1, "a": [1, 2]})
    assert json.loads(p.read_text()) == {"b": 1, "a": [1, 2]}
    assert list(p.read_text())[-1] == "\n"
    atomic_write_text(p, "second")
    assert p.read_text() == "second"
    assert sorted(os.listdir(p.parent)) == ["a.json"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(p) as tmp:
            assert tmp.endswith(".safetensors") and os.path.basename(tmp).startswith(".tmp-")
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]


def test_json_bytes_are_deterministic(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    atomic_write_json(a, {"z": 1, "y": 2.5})
    atomic_write_json(b, {"z": 1, "y": 2.5})
    assert a.read_bytes() == b.read_bytes()
