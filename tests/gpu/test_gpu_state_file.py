"""The GPU state file: a versioned round trip, strict reading, and atomic replacement."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState, GpuStateError


def sample_gpus(power: int = 400_000) -> list[GpuState]:
    return [
        GpuState(
            index=i,
            uuid=f"GPU-{i}",
            pci_bus_id=f"00000000:{0x53 + i:02X}:00.0",
            power_mw=power + i,
            sm_active=0.25,
            xid_events=[79] if i else [],
            processes=[GpuProcess(pid=41000 + i, used_memory_bytes=1 << 30)],
            lost=bool(i == 1),
        )
        for i in range(3)
    ]


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nvml" / "state.json"
    gpus = sample_gpus()
    gpu_state_file.write(path, gpus, time_s=123.5, hostname="node-007", driver_version="555.42.02")
    doc = gpu_state_file.read(path)
    assert doc.gpus == gpus
    assert (doc.time_s, doc.hostname, doc.driver_version) == (123.5, "node-007", "555.42.02")
    raw = json.loads(path.read_text())
    assert (raw["format"], raw["version"]) == ("fmdiag-gpu-state", 1)
    # The same state gives the same bytes (determinism of the simulator's outputs).
    again = tmp_path / "again.json"
    gpu_state_file.write(again, gpus, time_s=123.5, hostname="node-007", driver_version="555.42.02")
    assert again.read_bytes() == path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def doc_with(**gpu_changes: object) -> str:
    raw = gpu_state_file.to_dict(gpu_state_file.GpuStateDoc(time_s=1.0, gpus=sample_gpus()))
    raw["gpus"][1].update(gpu_changes)
    for key, value in list(gpu_changes.items()):
        if value is None:
            del raw["gpus"][1][key]
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"f\.json: not JSON"),
        ('{"format": "other", "version": 1}', r"f\.json: field 'format'"),
        ('{"format": "fmdiag-gpu-state", "version": 2}', r"field 'version'.*got 2"),
        (doc_with(uuid=None), r"gpus\[1\]: missing field\(s\) uuid"),
        (doc_with(power_mw="400W"), r"gpus\[1\]: field 'power_mw': expected int, got '400W'"),
        (doc_with(lost=1), r"gpus\[1\]: field 'lost': expected bool"),
        (doc_with(xid_events=[79, "x"]), r"gpus\[1\]: field 'xid_events'"),
        (doc_with(processes=[{"pid": 1}]), r"gpus\[1\]: field 'processes'\[0\]"),
        (doc_with(power_watts=400), r"gpus\[1\]: unknown field\(s\) power_watts"),
        (doc_with(index=0), r"duplicate GPU index"),
    ],
)
def test_bad_documents_name_file_and_field(text: str, message: str) -> None:
    with pytest.raises(GpuStateError, match=message):
        gpu_state_file.loads(text, "f.json")


def test_float_fields_accept_integers() -> None:
    doc = gpu_state_file.loads(doc_with(sm_active=1), "f.json")
    assert doc.gpus[1].sm_active == 1.0 and isinstance(doc.gpus[1].sm_active, float)


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    gpu_state_file.write(path, sample_gpus(0), time_s=0.0)
    stop = threading.Event()
    seen: list[list[int]] = [[], []]
    problems: list[str] = []

    def reader(out: list[int]) -> None:
        while not stop.is_set():
            try:
                doc = gpu_state_file.read(path)
            except (OSError, GpuStateError) as exc:
                problems.append(repr(exc))
                return
            # Every GPU of one snapshot carries the same step: never a mixture of two files.
            steps = {g.power_mw - g.index for g in doc.gpus}
            if len(steps) != 1:
                problems.append(f"mixed snapshot {steps}")
                return
            out.append(steps.pop())

    threads = [threading.Thread(target=reader, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    try:
        for step in range(1, 300):
            gpu_state_file.write(path, sample_gpus(step), time_s=float(step))
        while not all(seen) and not problems and all(t.is_alive() for t in threads):
            time.sleep(0.001)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems
    for out in seen:
        assert out, "each reader read at least once"
        assert out == sorted(out), "a reader never goes back to an older snapshot"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
