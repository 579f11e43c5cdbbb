"""The core's dump format against the bundled samples (written by the simulator through it)
and against broken documents, whose errors must name the file and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from fmdiag import dumpformat
from fmdiag.dumpformat import DumpFormatError, DumpLayout

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SAMPLE_DIRS = sorted(p for p in SAMPLES.iterdir() if p.is_dir())


@pytest.mark.parametrize("sample", SAMPLE_DIRS, ids=lambda p: p.name)
def test_samples_follow_the_layout_and_schemas(sample: Path) -> None:
    layout = DumpLayout(sample)
    doc = dumpformat.read_truth(layout.truth_path)
    assert doc["scenario"] == sample.name
    hw = doc["parameters"]["hardware"]
    assert len(layout.step_files()) == hw["nodes"] * hw["gpus_per_node"]
    files = layout.metrics_files()
    assert sorted(files) == sorted(dumpformat.METRIC_SUBSYSTEMS)
    for subsystem, path in files.items():
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        columns = {f.name: str(f.type) for f in schema}
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        dumpformat.check_metrics_schema(str(path), subsystem, columns, meta)
        labels = set(columns) - {c.name for c in dumpformat.FIXED_COLUMNS[:3]}
        assert labels <= set(dumpformat.label_columns(subsystem)), labels - set(
            dumpformat.label_columns(subsystem)
        )
        names = pf.read(columns=["metric"]).column("metric").unique().to_pylist()
        assert {dumpformat.subsystem_of(n) for n in names} == {subsystem}
    for path in layout.kineto_files():
        assert path.name.startswith("rank")


def test_truth_text_is_stable() -> None:
    path = SAMPLES / "healthy" / dumpformat.TRUTH_FILE
    assert dumpformat.dump_truth(dumpformat.read_truth(path)) == path.read_text()


def _truth() -> dict[str, Any]:
    doc = json.loads((SAMPLES / "mixed" / dumpformat.TRUTH_FILE).read_text())
    assert isinstance(doc, dict)
    return doc


def _break(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(_truth())
    if change == "missing":
        del doc["steps_total"]
    elif change == "class":
        doc["steps"][3]["class"] = "gpu"
    elif change == "fault":
        doc["steps"][5]["fault"] = 9
    elif change == "culprit":
        doc["faults"][0]["culprit"]["rack"] = "r1"
    elif change == "type":
        doc["steps"][2]["step"] = "2"
    elif change == "bool":
        doc["seed"] = True
    elif change == "version":
        doc["version"] = 2
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "field 'steps_total' missing"),
        ("class", "steps[3]: class 'gpu'"),
        ("fault", "steps[5]: fault 9 does not index faults"),
        ("culprit", "faults[0]: culprit key 'rack' unknown"),
        ("type", "steps[2]: field 'step' has the wrong type (str)"),
        ("bool", "field 'seed' has the wrong type (bool)"),
        ("version", "truth version 2 is newer"),
    ],
)
def test_a_broken_truth_names_the_field(change: str, message: str) -> None:
    with pytest.raises(DumpFormatError, match=r"^t\.json: ") as err:
        dumpformat.validate_truth(_break(change), "t.json")
    assert message in str(err.value)


def test_truth_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "truth.json"
    path.write_text('{"format": NaN}')
    with pytest.raises(DumpFormatError, match=str(path)):
        dumpformat.read_truth(path)
    with pytest.raises(ValueError):
        dumpformat.dump_truth({"x": float("nan")})


GOOD = {
    "timestamp": "double",
    "metric": "dictionary<values=string, indices=int32, ordered=0>",
    "value": "double",
}


@pytest.mark.parametrize(
    ("columns", "meta", "message"),
    [
        ({**GOOD}, None, "column 'instance' missing"),
        ({**GOOD, "instance": "string", "timestamp": "int64"}, None, "column 'timestamp' is int64"),
        ({**GOOD, "instance": "string", "gpu": "int32"}, None, "label column 'gpu' is int32"),
        ({**GOOD, "instance": "large_string"}, {"fmdiag.metrics_version": "7"}, "version '7' is newer"),
    ],
)
def test_a_metrics_schema_it_cannot_read_is_refused(
    columns: dict[str, str], meta: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(DumpFormatError, match=r"^m\.parquet: ") as err:
        dumpformat.check_metrics_schema("m.parquet", "gpu", columns, meta)
    assert message in str(err.value)


def test_layout_of_an_empty_folder(tmp_path: Path) -> None:
    layout = DumpLayout(tmp_path)
    assert layout.step_files() == [] and layout.kineto_files() == [] and layout.metrics_files() == {}
    with pytest.raises(ValueError, match="unknown metrics subsystem 'exporter'"):
        layout.metrics_path("exporter")
    assert dumpformat.kineto_file_name(3, gzip=True) == "rank3.json.gz"


def test_truth_lost_by_class_counts_faults_and_volume_only_where_it_is_the_class() -> None:
    truth = {
        "faults": [{"class": "straggler"}],
        "steps": [
            {"step": 0, "class": "straggler", "fault": 0, "lost_s": {"0": 0.5, "communication": 0.01}},
            # bound by its reads with no fault to blame: the loading cost is io's
            {"step": 1, "class": "io", "fault": None, "lost_s": {"communication": 0.01, "data_loading": 0.4}},
            # a healthy step's small volume costs are nobody's
            {
                "step": 2,
                "class": "compute",
                "fault": None,
                "lost_s": {"communication": 0.01, "data_loading": 0.0},
            },
        ],
    }
    assert dumpformat.truth_lost_by_class(truth) == {"straggler": 0.5, "io": 0.4}
