"""Which format a data file is in: the one place that decides it from the file name.

    detect("day1.parquet")                      -> "parquet"
    detect("part-r-00002.gz")                   -> "tfrecord"   (anything unrecognised)
    detect("x.csv", kind="tfrecord")            -> "tfrecord"   (an explicit format wins)
    detect("x.safetensors", accept=SOURCE_FORMATS)  -> DataError naming the file and the formats

By suffix, case-insensitive:
    .safetensors                 encoded   (an ncs-encoded file: ncs data encode, the data cache)
    .parquet .pq                 parquet
    .csv .csv.gz .tsv            csv
    anything else                tfrecord  (the authors' LT4REC TFRecord files, gzip or plain)

Directories (encoded directories, `ncs data convert`) and config files (.yaml / .yml, see
is_config) are not data files; callers check for them first.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from .errors import DataError

__all__ = ["FORMATS", "SOURCE_FORMATS", "TABLE_FORMATS", "SUFFIXES", "detect", "is_config", "is_table"]

# every format a data file can be in, and the suffixes that name it (tfrecord: the rest)
FORMATS = ("encoded", "parquet", "csv", "tfrecord")
SUFFIXES = {"encoded": (".safetensors",), "parquet": (".parquet", ".pq"), "csv": (".csv", ".csv.gz", ".tsv")}
# the formats a reader encodes (ncs data convert, data.kind of a config); tables need a schema
SOURCE_FORMATS = ("tfrecord", "csv", "parquet")
TABLE_FORMATS = ("csv", "parquet")
CONFIG_SUFFIXES = (".yaml", ".yml")


def detect(path: Union[str, "os.PathLike[str]"], kind: Optional[str] = None,
           accept: Sequence[str] = FORMATS) -> str:
    """The format of the data file `path`: `kind` when given (checked), else by its suffix.

    accept: the formats the caller can read; a file in another one is a DataError naming the
    path and the accepted formats."""
    path = os.fspath(path)
    if kind is None:
        low = path.lower()
        kind = next((k for k, sfx in SUFFIXES.items() if low.endswith(sfx)), "tfrecord")
        if kind not in accept:
            raise DataError(f"{path}: the {kind} format by its name; expected one of {list(accept)} "
                            f"({_names(accept)})")
    elif kind not in accept:
        raise DataError(f"{path}: format must be one of {list(accept)}, got {kind!r}")
    return kind


def is_table(path: Union[str, "os.PathLike[str]"]) -> bool:
    """A CSV or Parquet file by its name."""
    return detect(path) in TABLE_FORMATS


def is_config(path: Union[str, "os.PathLike[str]"]) -> bool:
    """A YAML config file by its name (.yaml / .yml), e.g. `ncs eval --data CONFIG.yaml`."""
    return os.fspath(path).lower().endswith(CONFIG_SUFFIXES)


def _names(accept: Sequence[str]) -> str:
    parts = [f"{k}: {' '.join(SUFFIXES[k])}" for k in accept if k in SUFFIXES]
    if "tfrecord" in accept:
        parts.append("tfrecord: any other name")
    return "; ".join(parts)
