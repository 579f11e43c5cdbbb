"""samples/: one fresh dump per scenario, listed in its README with the command that made it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq

from fmdiag.simulate.cluster.scenarios import SCENARIOS
from fmdiag.simulate.samples import REGENERATE_COMMAND, TRACED, UNTRACED, write_samples

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
#: About 0.5 MB a sample (21 scenarios, 11.2 MB in all): small enough for the repository, large
#: enough to show each scenario with its traces; room for a few more.
MAX_TOTAL_BYTES = 12 * 1024 * 1024
#: The verdict classes each sample must show (so every sample demonstrates its scenario).
CLASSES = {
    "healthy": {"compute"},
    "network-degraded": {"compute", "network"},  # warm-up steps compute longer and hide it
    "network-node": {"compute", "network"},
    "network-intermittent": {"compute", "network"},
    "network-volume": {"compute", "network"},
    "io-lustre": {"compute", "io"},
    "checkpoint-stall": {"compute", "io"},
    "host-dataloader": {"compute", "host"},
    "straggler-thermal": {"straggler"},
    "straggler-power": {"straggler"},
    "straggler-ramp": {"compute", "straggler"},
    "imbalance-data": {"compute"},
    "overlap": {"compute", "io", "straggler"},
    "mixed": {"compute", "io", "network", "straggler", "host"},
    # A stage imbalance is the job's own shape, not a fault of the hardware: compute, with a cause.
    "pp-stage-imbalance": {"compute"},
    "pp-seq-imbalance": {"compute"},
    "pp-straggler": {"straggler"},
    "straggler-cpu-neighbour": {"compute", "straggler"},
    "straggler-memory-pressure": {"compute", "straggler"},
    "straggler-python-gc": {"straggler"},
    "moe-expert-imbalance": {"compute"},
}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_every_scenario_has_a_sample_with_its_truth() -> None:
    readme = (SAMPLES / "README.md").read_text()
    assert REGENERATE_COMMAND in readme
    for name in SCENARIOS:
        truth = json.loads((SAMPLES / name / "truth.json").read_text())
        assert truth["scenario"] == name
        assert set(truth["class_counts"]) == CLASSES[name], name
        assert sum(1 for line in readme.splitlines() if line.startswith(f"| [`{name}`]")) == 1
        assert (SAMPLES / name / "steps").is_dir() and (SAMPLES / name / "metrics" / "gpu.parquet").is_file()
    for name in (n for n in SCENARIOS if (n.startswith(TRACED) or n == "mixed") and n not in UNTRACED):
        assert len(list((SAMPLES / name / "kineto").glob("rank*.json.gz"))) >= 2, name
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < MAX_TOTAL_BYTES


def test_samples_are_not_stale(tmp_path: Path) -> None:
    """Regenerate and compare: rerun `fmdiag simulate --samples samples` when this fails."""
    write_samples(tmp_path)
    fresh, committed = _files(tmp_path), _files(SAMPLES)
    assert fresh == committed, f"file lists differ; run: {REGENERATE_COMMAND}"
    for rel in fresh:
        a, b = tmp_path / rel, SAMPLES / rel
        if rel.endswith(".parquet"):
            # Compared as tables: Parquet bytes also depend on the pyarrow version writing them.
            same = pq.read_table(a).equals(pq.read_table(b))
        elif rel.endswith(".gz"):
            same = gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())
        else:
            same = a.read_bytes() == b.read_bytes()
        assert same, f"samples/{rel} is stale; run: {REGENERATE_COMMAND}"
