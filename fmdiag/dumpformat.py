"""The trace dump: the directory that carries one job's evidence to ``fmdiag analyze``.

Three programs meet in this format and none of them owns it: ``fmdiag simulate`` writes whole
dumps, ``fmdiag collect`` writes ``steps/`` and ``metrics/`` from a live Prometheus, and the
analyzer reads them. So the layout, the metrics table's columns and the truth document are
defined here, in the core, as data; writers and readers go through these names, and
``docs/formats.md`` documents the same things for people.

Standard library only (like the rest of the core): the Parquet column checks take the schema
as ``{column: arrow type string}`` so the exporter and a training image never import pyarrow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmdiag import catalog, steprecord

# -- layout -----------------------------------------------------------------------------------

STEPS_DIR = "steps"
KINETO_DIR = "kineto"
#: JAX profiler output as ``jax.profiler`` writes it, one folder per rank:
#: ``jax/rank<r>/plugins/profile/<timestamp>/<host>.trace.json.gz`` (and ``.xplane.pb``).
JAX_DIR = "jax"
METRICS_DIR = "metrics"
TRUTH_FILE = "truth.json"
#: Written only by ``fmdiag simulate``: node trees (``--node-trees``/``--live``) and live rates.
NODES_DIR = "nodes"
LIVE_TRUTH_FILE = "live-truth.json"
ENTRIES: tuple[str, ...] = (
    STEPS_DIR,
    METRICS_DIR,
    KINETO_DIR,
    JAX_DIR,
    NODES_DIR,
    TRUTH_FILE,
    LIVE_TRUTH_FILE,
)

KINETO_SUFFIXES: tuple[str, ...] = (".json", ".json.gz")
METRICS_SUFFIX = ".parquet"


class DumpFormatError(ValueError):
    """A dump, or a file in it, does not follow the format; the message names file and field."""


def kineto_file_name(rank: int, *, gzip: bool = False) -> str:
    """``rank<r>.json[.gz]``: readers take the rank from ``distributedInfo``, this name is the fallback."""
    return f"rank{rank}.json" + (".gz" if gzip else "")


@dataclass(frozen=True)
class DumpLayout:
    """Where each part of a dump lives under ``root``; every part but ``steps/`` is optional."""

    root: Path

    @property
    def steps_dir(self) -> Path:
        return self.root / STEPS_DIR

    @property
    def kineto_dir(self) -> Path:
        return self.root / KINETO_DIR

    @property
    def jax_dir(self) -> Path:
        return self.root / JAX_DIR

    @property
    def metrics_dir(self) -> Path:
        return self.root / METRICS_DIR

    @property
    def nodes_dir(self) -> Path:
        return self.root / NODES_DIR

    @property
    def truth_path(self) -> Path:
        return self.root / TRUTH_FILE

    @property
    def live_truth_path(self) -> Path:
        return self.root / LIVE_TRUTH_FILE

    def metrics_path(self, subsystem: str) -> Path:
        if subsystem not in METRIC_SUBSYSTEMS:
            raise ValueError(
                f"unknown metrics subsystem {subsystem!r}; one of {', '.join(METRIC_SUBSYSTEMS)}"
            )
        return self.metrics_dir / f"{subsystem}{METRICS_SUFFIX}"

    def step_files(self) -> list[Path]:
        if self.steps_dir.is_dir():
            return steprecord.step_files(self.steps_dir)
        if self.is_spool():
            return sorted(p for p in self.root.glob("*.jsonl") if p.is_file())
        return []

    def is_spool(self) -> bool:
        """``root`` is a steptrace spool directory itself (its ``<job>.rank<N>.jsonl`` files at the
        top, no dump folders): users point the analyzer at the spool they already have."""
        if any(d.is_dir() for d in (self.steps_dir, self.kineto_dir, self.metrics_dir)):
            return False
        return any(p.is_file() for p in self.root.glob("*.jsonl"))

    def kineto_files(self) -> list[Path]:
        if not self.kineto_dir.is_dir():
            return []
        return sorted(
            p for p in self.kineto_dir.iterdir() if p.is_file() and p.name.endswith(KINETO_SUFFIXES)
        )

    def metrics_files(self) -> dict[str, Path]:
        """Subsystem -> file, for the subsystems present (a dump may hold only some)."""
        return {s: p for s in METRIC_SUBSYSTEMS if (p := self.metrics_path(s)).is_file()}


# -- metrics/<subsystem>.parquet ---------------------------------------------------------------

#: Bumped when a column changes meaning. Version 1 files carry no version key; a later version
#: writes ``METRICS_VERSION_KEY`` into the Parquet key-value metadata, and readers refuse
#: versions above the one they know.
METRICS_FORMAT_VERSION = 1
METRICS_VERSION_KEY = "fmdiag.metrics_version"

#: Every subsystem of the catalog that a node's exporter serves (the exporter's own
#: self-metrics describe the scraper, not the job, and are not dumped).
METRIC_SUBSYSTEMS: tuple[str, ...] = tuple(s for s in catalog.SUBSYSTEMS if s != "exporter")


@dataclass(frozen=True)
class Column:
    name: str
    #: Arrow type as pyarrow prints it; "string" columns may be dictionary-encoded.
    arrow_type: str
    meaning: str


TIMESTAMP = Column("timestamp", "double", "Unix seconds of the sample (float64)")
METRIC = Column(
    "metric", "string", "the exposed sample name, as catalogued (histograms as _bucket/_count/_sum)"
)
VALUE = Column("value", "double", "the sample value (float64); absent samples are absent rows, never NaN")
INSTANCE = Column("instance", "string", "the scrape target: the node's host name")
#: Columns every metrics file has, in this order; one string column per label follows.
FIXED_COLUMNS: tuple[Column, ...] = (TIMESTAMP, METRIC, VALUE, INSTANCE)
#: The value of a label column on a row whose series has no such label.
NO_LABEL = ""
#: A histogram bucket's bound label, which the catalog does not list per family.
BUCKET_LABEL = "le"


def label_columns(subsystem: str) -> tuple[str, ...]:
    """Label columns a file of ``subsystem`` may hold: the catalogued labels, ``instance``, ``le``."""
    names: dict[str, None] = {INSTANCE.name: None}
    for metric in catalog.by_subsystem(subsystem):
        names.update(dict.fromkeys(metric.all_labels))
        if metric.type is catalog.MetricType.HISTOGRAM:
            names[BUCKET_LABEL] = None
    return tuple(names)


def subsystem_of(sample_name: str) -> str | None:
    """The metrics file a sample belongs in (``fmdiag collect`` sorts series with it)."""
    family = catalog.family_of(sample_name)
    return family.subsystem if family is not None and family.subsystem in METRIC_SUBSYSTEMS else None


def _is_string(arrow_type: str) -> bool:
    return arrow_type in ("string", "large_string") or (
        arrow_type.startswith("dictionary<values=") and "string" in arrow_type.split(",", maxsplit=1)[0]
    )


def check_metrics_schema(
    source: str, subsystem: str, columns: Mapping[str, str], metadata: Mapping[str, str] | None = None
) -> None:
    """Refuse a metrics table whose columns or version this reader cannot interpret.

    ``columns`` maps column name to arrow type string (``str(field.type)``); ``metadata`` is
    the file's key-value metadata. Label columns beyond the catalog's are allowed (a stock
    dcgm-exporter or relabelling adds some); a fixed column missing or mistyped is an error.
    """
    version = (metadata or {}).get(METRICS_VERSION_KEY, str(METRICS_FORMAT_VERSION))
    if not version.isdigit() or int(version) > METRICS_FORMAT_VERSION:
        raise DumpFormatError(
            f"{source}: metrics format version {version!r} is newer than this reader "
            f"({METRICS_FORMAT_VERSION}); upgrade fmdiag"
        )
    if subsystem not in METRIC_SUBSYSTEMS:
        raise DumpFormatError(f"{source}: unknown subsystem {subsystem!r}")
    for col in FIXED_COLUMNS:
        got = columns.get(col.name)
        if got is None:
            raise DumpFormatError(f"{source}: column {col.name!r} missing ({col.meaning})")
        ok = _is_string(got) if col.arrow_type == "string" else got == col.arrow_type
        if not ok:
            raise DumpFormatError(f"{source}: column {col.name!r} is {got}, expected {col.arrow_type}")
    fixed = {c.name for c in FIXED_COLUMNS}
    for name, arrow_type in columns.items():
        if name not in fixed and not _is_string(arrow_type):
            raise DumpFormatError(f"{source}: label column {name!r} is {arrow_type}, expected string")


# -- truth.json --------------------------------------------------------------------------------

TRUTH_FORMAT = "fmdiag-truth"
TRUTH_VERSION = 1
LIVE_TRUTH_FORMAT = "fmdiag-live-truth"
LIVE_TRUTH_VERSION = 1
#: The ``lost_s`` key of the time communication itself cost (collectives made free).
LOST_COMMUNICATION = "communication"
#: The ``lost_s`` key of the time input loading itself cost (storage and loader made free).
LOST_DATA_LOADING = "data_loading"
#: The bottleneck classes a step can have: the same vocabulary as the analyzer's verdicts.
VERDICT_CLASSES: tuple[str, ...] = ("compute", "network", "io", "host", "straggler")
#: Keys a culprit may have, each only where it applies (a GPU straggler has no ``ost``).
CULPRIT_KEYS: dict[str, type | tuple[type, ...]] = {
    "node": str,
    "rank": int,
    "local_rank": int,
    # A parallel group's coordinates: a late pipeline stage is named by pp_rank, not by one rank.
    "pp_rank": int,
    "dp_rank": int,
    # A hot expert's rank in its expert-parallel group.
    "ep_rank": int,
    "gpu": int,
    "gpu_uuid": str,
    "pci_bus_id": str,
    "efa_device": str,
    "efa_devices": list,
    "fs": str,
    "ost": str,
    "ost_index": int,
}
_TRUTH_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "scenario": str,
    "description": str,
    "seed": int,
    "job": str,
    "start_ns": int,
    "steps_total": int,
    "parameters": dict,
    "nominal": dict,
    "faults": list,
    "class_counts": dict,
    "steps": list,
}
_FAULT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str,
    "class": str,
    "first_step": (int, type(None)),
    "last_step": (int, type(None)),
    "parameters": dict,
    "culprit": (dict, type(None)),
}
_STEP_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "class": str,
    "fault": (int, type(None)),
    "culprit": (dict, type(None)),
}


def _check_fields(
    source: str, where: str, obj: object, fields: Mapping[str, type | tuple[type, ...]]
) -> None:
    if not isinstance(obj, dict):
        raise DumpFormatError(f"{source}: {where} is {type(obj).__name__}, expected an object")
    for name, kind in fields.items():
        if name not in obj:
            raise DumpFormatError(f"{source}: {where}field {name!r} missing")
        value = obj[name]
        bad_bool = isinstance(value, bool) and kind is not bool
        if bad_bool or not isinstance(value, kind):
            raise DumpFormatError(
                f"{source}: {where}field {name!r} has the wrong type ({type(value).__name__})"
            )


def _check_culprit(source: str, where: str, culprit: Mapping[str, Any] | None) -> None:
    for key, value in (culprit or {}).items():
        kind = CULPRIT_KEYS.get(key)
        if kind is None:
            raise DumpFormatError(f"{source}: {where}culprit key {key!r} unknown")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise DumpFormatError(f"{source}: {where}culprit key {key!r} has the wrong type")


def validate_truth(doc: object, source: str = TRUTH_FILE) -> dict[str, Any]:
    """Check a truth document and return it; the error names the step, fault and field."""
    _check_fields(source, "", doc, _TRUTH_FIELDS)
    assert isinstance(doc, dict)
    if doc["format"] != TRUTH_FORMAT:
        raise DumpFormatError(f"{source}: format {doc['format']!r} is not {TRUTH_FORMAT!r}")
    if doc["version"] > TRUTH_VERSION:
        raise DumpFormatError(f"{source}: truth version {doc['version']} is newer than {TRUTH_VERSION}")
    faults = doc["faults"]
    for i, fault in enumerate(faults):
        where = f"faults[{i}]: "
        _check_fields(source, where, fault, _FAULT_FIELDS)
        if fault["class"] not in VERDICT_CLASSES:
            raise DumpFormatError(f"{source}: {where}class {fault['class']!r} not one of {VERDICT_CLASSES}")
        _check_culprit(source, where, fault["culprit"])
    for i, step in enumerate(doc["steps"]):
        where = f"steps[{i}]: "
        _check_fields(source, where, step, _STEP_FIELDS)
        if step["class"] not in VERDICT_CLASSES:
            raise DumpFormatError(f"{source}: {where}class {step['class']!r} not one of {VERDICT_CLASSES}")
        if step["fault"] is not None and not 0 <= step["fault"] < len(faults):
            raise DumpFormatError(f"{source}: {where}fault {step['fault']} does not index faults")
        _check_culprit(source, where, step["culprit"])
        _check_optional_step_fields(source, where, step, len(faults))
    return doc


def _check_optional_step_fields(source: str, where: str, step: Mapping[str, Any], nfaults: int) -> None:
    """``secondary`` (other faults that cost the step enough), ``lost_s`` (seconds per cause:
    a fault's index, ``communication`` or ``data_loading``), ``checkpoint`` (a normal checkpoint ran)."""
    secondary = step.get("secondary", [])
    if not isinstance(secondary, list) or any(
        isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < nfaults for j in secondary
    ):
        raise DumpFormatError(f"{source}: {where}secondary must list indexes into faults")
    lost = step.get("lost_s", {})
    if not isinstance(lost, dict):
        raise DumpFormatError(f"{source}: {where}lost_s must be an object")
    for key, value in lost.items():
        cause_ok = key in (LOST_COMMUNICATION, LOST_DATA_LOADING) or (key.isdigit() and int(key) < nfaults)
        if not cause_ok or isinstance(value, bool) or not isinstance(value, int | float):
            raise DumpFormatError(f"{source}: {where}lost_s[{key!r}] is not a cause with seconds")
    if not isinstance(step.get("checkpoint", False), bool):
        raise DumpFormatError(f"{source}: {where}checkpoint must be true or false")


def truth_lost_by_class(truth: Mapping[str, Any]) -> dict[str, float]:
    """Seconds the run lost per verdict class in a truth document: every fault's cost under its
    class, and a volume cause's (``communication``, ``data_loading``) on the steps it is the class
    of (no fault to blame). What an analyzer's attribution is scored against."""
    volume = {LOST_COMMUNICATION: "network", LOST_DATA_LOADING: "io"}
    lost: dict[str, float] = {}
    for step in truth["steps"]:
        for key, seconds in step.get("lost_s", {}).items():
            if key.isdigit():
                cls = truth["faults"][int(key)]["class"]
            elif step.get("fault") is None and volume.get(key) == step["class"]:
                cls = step["class"]
            else:
                continue
            lost[cls] = lost.get(cls, 0.0) + float(seconds)
    return lost


def read_truth(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DumpFormatError(f"{path}: not a readable truth document: {exc}") from exc
    return validate_truth(doc, str(path))


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def dump_truth(doc: Mapping[str, Any]) -> str:
    """The text of ``truth.json``: one spelling so the same run gives the same bytes."""
    return json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n"
