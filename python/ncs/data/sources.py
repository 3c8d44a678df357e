"""Data sources beyond one in-memory file: encoded directories (streamed) and a
{train, valid, test} mapping of files or directories (the split is given)."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

from .errors import DataError
from .types import EncodedData


class GivenParts:
    """Three in-memory parts encoded with one vocabulary (the train file's; values unseen in
    training map to id 0 in valid and test, as at serving time)."""

    def __init__(self, train: EncodedData, valid: EncodedData, test: EncodedData):
        self.parts = (train, valid, test)
        self.fields = train.fields

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def split_parts(self, by: str, fractions: Sequence[float], seed: int) -> Tuple[EncodedData, ...]:
        return self.parts


def load_source(cfg: Dict[str, Any], with_vocab: bool = False):
    """cfg.data of kind 'encoded', or with data.path a mapping: (source, vocab) if with_vocab."""
    d = cfg.data
    opts = dict(d.options or {})
    if d.kind == "encoded":
        from .stream import open_source

        if opts:
            raise DataError(f"data.options: kind 'encoded' takes no options, got {sorted(opts)}")
        src = open_source(d.path)
        first = next(iter(src.dirs.values()))
        return (src, first.vocab()) if with_vocab else src
    if d.kind == "synthetic":
        raise DataError("data.path: a {train, valid, test} mapping needs file data, not kind 'synthetic'")
    paths = d.path
    parts = []
    vocab = None
    for name in ("train", "valid", "test"):
        if d.kind == "tfrecord":
            from .lt4rec import encode_lt4rec

            bad = set(opts) - {"max_len", "skip_corrupt"}
            if bad:
                raise DataError(f"data.options: unknown keys {sorted(bad)} for kind 'tfrecord'")
            data, voc = encode_lt4rec(paths[name], max_len=int(opts.get("max_len", 8)),
                                      skip_corrupt=bool(opts.get("skip_corrupt", False)), vocab=vocab)
        else:
            from .table import encode_table

            if "schema" not in opts:
                raise DataError(f"data.options.schema: a schema is needed for kind {d.kind!r}")
            data, voc = encode_table(paths[name], opts["schema"], vocab=vocab, fmt=d.kind)
        if vocab is None:
            vocab, train_fields = voc, data.fields
        else:  # the train vocabulary's sizes
            data = EncodedData(train_fields, data.ids, data.labels, data.groups)
        parts.append(data)
    src = GivenParts(*parts)
    return (src, vocab) if with_vocab else src
