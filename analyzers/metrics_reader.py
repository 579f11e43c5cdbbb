"""Node metrics from a dump's ``metrics/<subsystem>.parquet`` into frames, schema checked first.

The format is the core's (``fmdiag.dumpformat``, docs/formats.md): long form, columns
``timestamp``, ``metric``, ``value``, ``instance`` and one string column per label. Each file's
schema and version are checked with ``check_metrics_schema`` before any data is read, so a file
from a newer fmdiag, or one that is not Parquet, fails with its name instead of a pyarrow trace.

The frames keep the file's columns unchanged (string columns as categoricals). Live Prometheus
answers go through :func:`frame_from_columns`, so both sources give identical frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
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


def read_file(path: Any, subsystem: str) -> pd.DataFrame:
    """One ``metrics/<subsystem>.parquet``; InputError naming the file when it cannot be used."""
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
    frame: pd.DataFrame = table.to_pandas()
    return frame


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
