"""Node metrics from a dump's ``metrics/<subsystem>.parquet`` into frames, schema checked first.

The format is the core's (``fmdiag.dumpformat``, docs/formats.md): long form, columns
``timestamp``, ``metric``, ``value``, ``instance`` and one string column per label. Each file's
schema and version are checked with ``check_metrics_schema`` before any data is read, so a file
from a newer fmdiag, or one that is not Parquet, fails with its name instead of a pyarrow trace.

The frames keep the file's columns unchanged (string columns as categoricals). Live Prometheus
answers go through :func:`frame_from_columns`, so both sources give identical frames.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmdiag import dumpformat
from fmdiag.analyzers.errors import InputError


@dataclass(frozen=True)
class MetricsSummary:
    """What one subsystem's frame holds, for the coverage section of the output."""

    subsystem: str
    rows: int
    series: int
    metrics: int
    instances: list[str]
    first: float | None
    last: float | None


def _table(path: Any, subsystem: str) -> pa.Table:
    source = str(path)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"not a readable Parquet file: {exc}") from None
    raw_meta = schema.metadata or {}
    metadata = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw_meta.items()}
    columns = {f.name: str(f.type) for f in schema}
    try:
        dumpformat.check_metrics_schema(source, subsystem, columns, metadata)
    except dumpformat.DumpFormatError as exc:
        raise InputError(source, str(exc).removeprefix(f"{source}: ")) from None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"cannot read the data: {exc}") from None
    return table


def read_file(path: Any, subsystem: str) -> pd.DataFrame:
    """One ``metrics/<subsystem>.parquet``; InputError naming the file when it cannot be used."""
    frame: pd.DataFrame = _table(path, subsystem).to_pandas()
    return frame


def read_used(path: Any, subsystem: str, keep: Collection[str]) -> tuple[pd.DataFrame, MetricsSummary]:
    """The rows of the metrics in ``keep`` as a frame, and the summary of the *whole* file.

    Both work on the dictionary codes of the string columns (one dictionary per column after
    unifying the row groups'), never on the strings: a 512-node file of 40 million rows is
    summarised and filtered in about a second, where casting to strings took half a minute.
    """
    table = _table(path, subsystem)
    try:
        table = table.unify_dictionaries()
    except pa.ArrowException as exc:
        raise InputError(str(path), f"cannot read the data: {exc}") from None
    summary = summarize_table(subsystem, table)
    # the categoricals keep the whole file's categories: groupby(observed=True) and value
    # filters never see the unused ones, and dropping them cost seconds on a big dump
    frame: pd.DataFrame = table.filter(_is_in(table["metric"], keep)).to_pandas()
    return frame, summary


def _codes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A string column as integer keys that are equal exactly where the strings are."""
    if pa.types.is_dictionary(column.type):
        return pa.chunked_array([c.indices for c in column.chunks], type=column.type.index_type)
    return column


def _dictionary(column: pa.ChunkedArray) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        return column.chunks[0].dictionary if column.num_chunks else pa.array([], pa.string())
    return pc.unique(column)


def _is_in(column: pa.ChunkedArray, keep: Collection[str]) -> pa.ChunkedArray:
    """Rows whose value is one of ``keep`` (a dictionary column is matched on its codes)."""
    wanted = pa.array(sorted(keep), pa.string())
    if not pa.types.is_dictionary(column.type):
        return pc.is_in(column, value_set=wanted)
    dictionary = _dictionary(column)
    hit = pc.is_in(dictionary, value_set=wanted).to_numpy(zero_copy_only=False)
    codes = pa.array(np.flatnonzero(hit), column.type.index_type)
    return pa.chunked_array([pc.is_in(c.indices, value_set=codes) for c in column.chunks], type=pa.bool_())


def summarize_table(subsystem: str, table: pa.Table) -> MetricsSummary:
    """:func:`summarize` on an Arrow table (same numbers, without building the frame); string
    columns should have unified dictionaries (``Table.unify_dictionaries``)."""
    if not table.num_rows:
        return MetricsSummary(subsystem, 0, 0, 0, [], None, None)
    labels = [c for c in table.column_names if c not in ("timestamp", "value")]
    keys = pa.table({c: _codes(table[c]) for c in labels})
    series = keys.group_by(labels).aggregate([]).num_rows
    ts = pc.min_max(table["timestamp"])
    used = pc.unique(_codes(table["instance"]))
    names = _dictionary(table["instance"])
    instances = names.take(used) if pa.types.is_dictionary(table["instance"].type) else used
    return MetricsSummary(
        subsystem=subsystem,
        rows=table.num_rows,
        series=series,
        metrics=len(pc.unique(_codes(table["metric"]))),
        instances=sorted(str(i) for i in instances.to_pylist()),
        first=float(ts["min"].as_py()),
        last=float(ts["max"].as_py()),
    )


def read_dump(layout: dumpformat.DumpLayout) -> dict[str, pd.DataFrame]:
    """Subsystem -> frame, for the subsystems the dump has."""
    return {sub: read_file(path, sub) for sub, path in layout.metrics_files().items()}


def frame_from_columns(columns: Mapping[str, Any]) -> pd.DataFrame:
    """A frame in the dump's shape from in-memory columns (what ``fmdiag collect`` writes)."""
    data: dict[str, Any] = {}
    for name, values in columns.items():
        if name in ("timestamp", "value"):
            data[name] = pd.array(values, dtype="float64")
        else:
            data[name] = pd.Categorical(values)
    return pd.DataFrame(data)


def summarize(subsystem: str, frame: pd.DataFrame) -> MetricsSummary:
    labels = [c for c in frame.columns if c not in ("timestamp", "value")]
    series = int(frame[labels].drop_duplicates().shape[0]) if len(frame) else 0
    return MetricsSummary(
        subsystem=subsystem,
        rows=len(frame),
        series=series,
        metrics=int(frame["metric"].nunique()) if len(frame) else 0,
        instances=sorted(str(i) for i in frame["instance"].unique()) if len(frame) else [],
        first=float(frame["timestamp"].min()) if len(frame) else None,
        last=float(frame["timestamp"].max()) if len(frame) else None,
    )
