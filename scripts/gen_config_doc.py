"""Write docs/CONFIG.md, the reference of every config key, from the schema in ncs.config.

    python scripts/gen_config_doc.py            # rewrite docs/CONFIG.md
    python scripts/gen_config_doc.py --check    # exit 1 if docs/CONFIG.md is stale (the tests run this)
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

from ncs.config import SCHEMA, TASK_KEYS  # noqa: E402

HEADER = """# Config reference

Generated from `ncs.config.SCHEMA` by `python scripts/gen_config_doc.py` (a test fails when this
file is stale). Every key has a default; a config file gives only what it changes. Unknown keys
and bad values are errors that name the key path. See [TRAINER.md](TRAINER.md) for how the keys
drive the stages.

Paths (`data.path` and each path of its `{train, valid, test}` mapping, `data.options.schema`
when it names a file, `data.cache_dir`) are relative to the config file's folder. In Python,
`ncs.config.load_config(path)` / `resolve_config(dict)` return a frozen dataclass tree read as
`cfg.stages.joint.metric` (lists are tuples); `cfg.override({...})` gives a new validated
config and `cfg.to_dict()` the YAML form written to a run's `config.yaml`. The removed key
`optim.embedding_optimizer` (it had the one value `sparse_adam`) is still accepted with that
value, with a FutureWarning, so old files and run directories load.

| key | default | meaning |
| --- | --- | --- |
"""


def _fmt(v):
    return "`" + json.dumps(v) + "`"


def rows(schema, prefix=""):
    for key, node in schema.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(node, dict):
            yield from rows(node, path)
        else:
            yield f"| `{path}` | {_fmt(node.default)} | {node.doc.replace('|', '/')} |"


def render() -> str:
    out = HEADER + "\n".join(rows(SCHEMA)) + "\n"
    out += "\nEach entry of `tasks` is a mapping:\n\n| key | default | meaning |\n| --- | --- | --- |\n"
    out += "\n".join(f"| `{k}` | {_fmt(leaf.default)} | {leaf.doc} |" for k, leaf in TASK_KEYS.items()) + "\n"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    path = ROOT / "docs" / "CONFIG.md"
    text = render()
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is stale: run python scripts/gen_config_doc.py")
            return 1
        return 0
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
