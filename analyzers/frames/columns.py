"""Column frames without pandas: ``dict[str, numpy array]``, all columns the same length.

The Kineto path (reader, breakdown, spread, reports) works on these so that analysing traces
loads numpy only: pandas alone costs ~80 MB of resident memory and a third of a second to
import, more than parsing a trace takes. Step records and metrics use pandas frames; every
function here also accepts one (anything indexable by column name).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Columns = dict[str, np.ndarray]


def empty(dtypes: Mapping[str, str]) -> Columns:
    return {name: np.empty(0, dtype=dtype) for name, dtype in dtypes.items()}


def concat(parts: Sequence[Mapping[str, np.ndarray]], dtypes: Mapping[str, str]) -> Columns:
    """Row-wise concatenation; with no parts, empty columns of ``dtypes``."""
    if not parts:
        return empty(dtypes)
    return {
        name: np.concatenate([np.asarray(p[name]) for p in parts]).astype(dtype)
        for name, dtype in dtypes.items()
    }


def select(cols: Mapping[str, np.ndarray], mask: np.ndarray) -> Columns:
    return {name: np.asarray(values)[mask] for name, values in cols.items()}


def length(cols: Mapping[str, Any]) -> int:
    for values in cols.values():
        return len(values)
    return 0


def rows(cols: Mapping[str, Any]) -> list[list[Any]]:
    """Row lists for JSON: numpy scalars as Python numbers, NaN as None."""
    lists = []
    for values in cols.values():
        arr = np.asarray(values)
        as_list = arr.tolist()
        if arr.dtype.kind == "f":
            as_list = [None if math.isnan(v) else v for v in as_list]
        lists.append(as_list)
    return [list(r) for r in zip(*lists, strict=True)]
