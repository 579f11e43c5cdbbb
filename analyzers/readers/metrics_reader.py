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


def _open(path: Any, subsystem: str) -> pq.ParquetFile:
    """The file, its schema and version checked before any data is read."""
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
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"cannot read the data: {exc}") from None


def _table(path: Any, subsystem: str) -> pa.Table:
    _open(path, subsystem)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(str(path), f"cannot read the data: {exc}") from None
    return table


def read_file(path: Any, subsystem: str) -> pd.DataFrame:
    """One ``metrics/<subsystem>.parquet``; InputError naming the file when it cannot be used."""
    frame: pd.DataFrame = _table(path, subsystem).to_pandas()
    return frame


def read_used(path: Any, subsystem: str, keep: Collection[str]) -> tuple[pd.DataFrame, MetricsSummary]:
    """The rows of the metrics in ``keep`` as a frame, and the summary of the *whole* file.

    Read one row group at a time: each is summarised (:class:`_Summary`) and filtered, and only
    the kept rows stay. A 512-node dump holds ~140 million rows; read whole, its largest file
    alone took 3 GB, more than the rest of a 4,096-rank analysis (issue 18). Both steps work on
    the dictionary codes of the string columns, never on the strings (casting 40 million rows to
    strings took half a minute). The frame is the one a whole-file read gives: the kept pieces
    keep their row groups' dictionaries (a row group with nothing kept, an empty table of them),
    so unifying them gives the categories, in their order, that unifying the whole file did.
    """
    source = str(path)
    parquet = _open(path, subsystem)
    schema = parquet.schema_arrow
    labels = [c for c in schema.names if c not in ("timestamp", "value")]
    summary = _Summary(labels)
    kept: list[pa.Table] = []
    try:
        for i in range(parquet.num_row_groups):
            group = parquet.read_row_group(i).unify_dictionaries()
            summary.add(group)
            piece = group.filter(_is_in(group["metric"], keep))
            # a row group with nothing kept still lends its dictionaries to the categories (an
            # empty take holds them alone; an empty slice would hold the whole row group)
            kept.append(piece if piece.num_rows else group.take(pa.array([], pa.int64())))
            del group
        rows = sum(piece.num_rows for piece in kept)
        # as a whole-file read filtered: no rows, no chunks (and so no categories)
        table = pa.concat_tables(kept) if rows else schema.empty_table()
        kept.clear()  # the pieces live on in the table until their dictionaries are unified
        table = table.unify_dictionaries()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"cannot read the data: {exc}") from None
    # the categoricals keep the whole file's categories: groupby(observed=True) and value
    # filters never see the unused ones, and dropping them cost seconds on a big dump; each
    # column's Arrow buffers are freed as soon as pandas has it (self_destruct), so the table and
    # the frame are not both held whole
    frame: pd.DataFrame = table.to_pandas(self_destruct=True, split_blocks=True)
    del table
    return frame, summary.result(subsystem)


class _Summary:
    """:func:`summarize_table` of a whole file, added up one row group at a time.

    A row group's distinct series are few (a file is written series by series, or a few time
    steps per group), so they are deduplicated together every :attr:`DEDUPE_ROWS` rows, not
    once per row group.

    Within a row group the string columns are compared by their codes; across row groups by
    the strings those codes stand for (each row group has its own dictionaries), so the distinct
    series, metrics and instances are those of the whole file.
    """

    DEDUPE_ROWS = 1 << 20

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.rows = 0
        self.lows: list[pa.Scalar] = []
        self.highs: list[pa.Scalar] = []
        #: Per label column: string (None for null) -> its code across the file.
        self.ids: dict[str, dict[Any, int]] = {c: {} for c in labels}
        #: The distinct series so far, as columns of those codes, and those of the row groups
        #: since (deduplicated together when they add up to :attr:`DEDUPE_ROWS`).
        self.series: pa.Table | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.metrics: set[Any] = set()
        self.instances: set[Any] = set()

    def add(self, table: pa.Table) -> None:
        """One row group, its string columns' dictionaries unified (one per column)."""
        if not table.num_rows:
            return
        self.rows += table.num_rows
        ts = pc.min_max(table["timestamp"])
        self.lows.append(ts["min"])
        self.highs.append(ts["max"])
        # a column with one value and no null (most labels of a file: empty strings) cannot split a
        # series within the row group: grouped without it, which halves the grouping's cost
        varying = [c for c in self.labels if not _constant(table[c])]
        keys = pa.table({c: _codes(table[c]) for c in varying or self.labels[:1]})
        distinct = keys.group_by(varying or self.labels[:1]).aggregate([])
        coded = {}
        for c in self.labels:
            strings = _dictionary(table[c])
            ids = self.ids[c]
            to_id = np.array([ids.setdefault(s, len(ids)) for s in strings.to_pylist()], dtype=np.int32)
            if c not in distinct.column_names:
                coded[c] = np.full(len(distinct), to_id[0], dtype=np.int32)
                continue
            local = distinct[c]
            if pa.types.is_dictionary(table[c].type):
                codes = local.to_numpy(zero_copy_only=False)
            else:  # plain strings: grouped on the strings themselves
                codes = pc.index_in(local, value_set=strings).to_numpy(zero_copy_only=False)
            valid = ~pd.isna(codes)
            mapped = np.full(len(codes), ids.setdefault(None, len(ids)), dtype=np.int32)
            mapped[valid] = to_id[codes[valid].astype(np.int64)]
            coded[c] = mapped
        self.pending.append(pa.table(coded))
        self.pending_rows += len(distinct)
        if self.pending_rows > self.DEDUPE_ROWS:
            self._dedupe()
        for c, seen in (("metric", self.metrics), ("instance", self.instances)):
            used = pc.unique(_codes(table[c]))
            names = _dictionary(table[c])
            present = names.take(used) if pa.types.is_dictionary(table[c].type) else used
            seen.update(present.to_pylist())

    def _dedupe(self) -> None:
        tables = ([self.series] if self.series is not None else []) + self.pending
        if tables:
            self.series = pa.concat_tables(tables).group_by(self.labels).aggregate([])
        self.pending, self.pending_rows = [], 0

    def result(self, subsystem: str) -> MetricsSummary:
        self._dedupe()
        if not self.rows:
            return MetricsSummary(subsystem, 0, 0, 0, [], None, None)
        lows = pc.min_max(pa.array([s.as_py() for s in self.lows], self.lows[0].type))
        highs = pc.min_max(pa.array([s.as_py() for s in self.highs], self.highs[0].type))
        return MetricsSummary(
            subsystem=subsystem,
            rows=self.rows,
            series=self.series.num_rows if self.series is not None else 0,
            metrics=len(self.metrics),
            instances=sorted(str(i) for i in self.instances),
            first=float(lows["min"].as_py()),
            last=float(highs["max"].as_py()),
        )


def _codes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A string column as integer keys that are equal exactly where the strings are."""
    if pa.types.is_dictionary(column.type):
        return pa.chunked_array([c.indices for c in column.chunks], type=column.type.index_type)
    return column


def _constant(column: pa.ChunkedArray) -> bool:
    """Whether a dictionary column (one dictionary for all chunks) holds one value and no null."""
    return (
        pa.types.is_dictionary(column.type)
        and column.num_chunks > 0
        and len(column.chunks[0].dictionary) == 1
        and column.null_count == 0
        and column.chunks[0].dictionary.null_count == 0
    )


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
