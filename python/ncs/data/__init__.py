"""Data for ncs: readers (TFRecord / LT4REC, CSV, Parquet), a synthetic generator, splits and a
binary cache, all producing EncodedData (see types.py)."""
from .cache import load_dataset, load_encoded, read_meta, save_encoded
from .crc import crc32c
from .errors import DataError
from .lt4rec import LT4REC_FIELDS, encode_lt4rec, load_lt4rec
from .splits import split, split_index, split_summary
from .summary import stats
from .synth import synthetic, synthetic_chunks
from .table import encode_table, load_table, parse_schema
from .tfrecord import iter_tfrecord, parse_example
from .types import EncodedData, FieldSpec

__all__ = [
    "DataError", "EncodedData", "FieldSpec", "LT4REC_FIELDS",
    "crc32c", "iter_tfrecord", "parse_example",
    "load_lt4rec", "encode_lt4rec", "load_table", "encode_table", "parse_schema",
    "synthetic", "synthetic_chunks", "split", "split_index", "split_summary",
    "load_dataset", "save_encoded", "load_encoded", "read_meta", "stats",
]
