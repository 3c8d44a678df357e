"""The README's Python example runs as written."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    for code in blocks:
        code = code.replace("/tmp/masks.safetensors", str(tmp_path / "masks.safetensors"))
        exec(compile(code, "README.md", "exec"), {})
