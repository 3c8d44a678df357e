"""The one exception every reader raises for corrupt or invalid input."""
from __future__ import annotations


class DataError(ValueError):
    """Corrupt or invalid input data; the message names the file (and record/row when known)."""
