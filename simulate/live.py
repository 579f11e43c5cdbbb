"""``--live``: keep the node trees, NVML state and step spools advancing in real time.

Simulated time is wall-clock time: the job starts when the command does, steps are
simulated ahead in chunks, and once a second every node tree is re-rendered for "now" and
the step records that completed are appended, so an exporter serving the trees shows real
rates. ``live-truth.json`` holds the rates an exporter should show (per node and device:
EFA bytes; per node and filesystem: Lustre read and write bytes), averaged over all steps
simulated so far; compare it with ``rate()`` over windows of twenty steps or more, since
EFA traffic comes in one burst per step. SIGINT or SIGTERM ends the loop; truth.json then
covers the steps that completed.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from fmdiag import dumpformat
from fmdiag.exporters.gpu_state_file import atomic_write_text
from fmdiag.simulate.cluster.model import NS, Chunk, ClusterModel, concat
from fmdiag.simulate.cluster.signals import Signals
from fmdiag.simulate.cluster.steps import rank_lines
from fmdiag.simulate.cluster.truth import culprit, truth_doc, write_truth
from fmdiag.simulate.dump import SimOptions, build_model, prepare_out, run_parameters
from fmdiag.simulate.nodes.from_model import node_states
from fmdiag.simulate.nodes.render import render_node
from fmdiag.steprecord import file_name

log = logging.getLogger(__name__)
#: Simulate this far ahead of now, so a batch prefetched for the next chunk is never missed.
HORIZON_S = 60.0


class LiveRun:
    """The live loop's state: the steps simulated so far and what has been written."""

    def __init__(self, opts: SimOptions, out: Path, start_ns: int) -> None:
        self.opts, self.out, self.start_ns = opts, out, start_ns
        self.layout = dumpformat.DumpLayout(out)
        self.model: ClusterModel = build_model(opts)
        self.chunks: list[Chunk] = []
        self.chunk: Chunk | None = None
        self.signals: Signals | None = None
        R = self.model.hw.world_size
        self.written = np.zeros(R, np.int64)  # step records written per rank
        self.job = opts.job_name
        self.chunk_steps = max(16, math.ceil(HORIZON_S / self.model.nominal_step_s()))

    def extend_to(self, t_ns: int) -> bool:
        """Simulate until every rank's steps reach past ``t_ns`` + the horizon; True if it grew."""
        grew = False
        horizon = t_ns + int(HORIZON_S * NS)
        while self.chunk is None or int(self.chunk.end[-1].min()) < horizon:
            self.chunks.append(self.model.run(self.chunk_steps))
            self.chunk = concat(self.chunks)
            self.chunks = [self.chunk]
            grew = True
        if grew:
            assert self.chunk is not None
            self.signals = Signals(self.model, self.chunk)
            self.write_live_truth()
        return grew

    def tick(self, t_ns: int) -> None:
        """Bring every output up to ``t_ns`` after the job's start."""
        self.extend_to(t_ns)
        assert self.chunk is not None and self.signals is not None
        self._append_steps(t_ns)
        self._render(t_ns)

    def _append_steps(self, t_ns: int) -> None:
        c = self.chunk
        assert c is not None
        done = (c.end <= t_ns).sum(axis=0)
        topo = self.model.topo
        for rank in np.flatnonzero(done > self.written).tolist():
            lo, hi = int(self.written[rank]), int(done[rank])
            part = c.slice(lo, hi)
            text = "".join(rank_lines(self.model, part, rank, self.start_ns, self.job))
            node, _ = topo.place(rank)
            name = file_name(self.job, rank)
            for folder in (self.layout.steps_dir, self.layout.nodes_dir / topo.hostnames[node] / "spool"):
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / name, "a", encoding="utf-8") as f:
                    f.write(text)
            self.written[rank] = hi

    def _render(self, t_ns: int) -> None:
        sig = self.signals
        assert sig is not None
        snap = sig.at([t_ns])
        for node, state in enumerate(node_states(sig, snap, self.start_ns)):
            boot = self.start_ns / NS - float(sig.uptime[node])
            render_node(
                state,
                self.layout.nodes_dir / state.hostname,
                efa_srd=self.opts.efa_srd,
                lustre_layout=self.opts.lustre_version,
                boot_time_s=boot,
            )

    def expected_rates(self) -> dict[str, Any]:
        """Mean per-second rates over every simulated step, per node, device and filesystem."""
        c, m = self.chunk, self.model
        assert c is not None
        span = float(c.end[-1].max()) / NS
        topo = m.topo
        nodes: dict[str, Any] = {}
        for n, host in enumerate(topo.hostnames):
            efa = c.efa_bytes[:, n, :].sum(axis=0) / span
            reads = {fs.fsname: 0.0 for fs in topo.filesystems}
            writes = dict(reads)
            reads[topo.data_fs.fsname] += float(c.read_bytes[:, n, :].sum()) / span
            writes[topo.checkpoint_fs.fsname] += float(c.write_bytes[:, n, :].sum()) / span
            nodes[host] = {
                "efa_tx_bytes_per_s": float(efa.sum()),
                "efa_rx_bytes_per_s": float(efa.sum()),
                "efa_devices": {
                    d.name: {"tx_bytes_per_s": float(efa[d.index]), "rx_bytes_per_s": float(efa[d.index])}
                    for d in topo.efa(n)
                },
                "lustre_read_bytes_per_s": reads,
                "lustre_write_bytes_per_s": writes,
            }
        return {
            "step_seconds_mean": span / c.nsteps,
            "nodes": nodes,
        }

    def write_live_truth(self) -> None:
        c = self.chunk
        assert c is not None
        doc = {
            "format": dumpformat.LIVE_TRUTH_FORMAT,
            "version": dumpformat.LIVE_TRUTH_VERSION,
            "scenario": self.model.scenario.name,
            "description": self.model.scenario.description,
            "start_ns": self.start_ns,
            "steps_simulated": c.nsteps,
            "simulated_until_ns": self.start_ns + int(c.end.max()),
            "faults": [
                {"kind": f.kind.value, "class": f.verdict_class, "culprit": culprit(self.model, f, t)}
                for f, t in zip(self.model.scenario.faults, self.model.targets, strict=True)
            ],
            **self.expected_rates(),
        }
        atomic_write_text(self.layout.live_truth_path, json.dumps(doc, indent=1) + "\n")

    def finish(self, t_ns: int) -> None:
        """truth.json for the steps every rank completed by ``t_ns``."""
        c = self.chunk
        if c is None:
            return
        # Only steps whose records every rank has written: truth never names a step the
        # dump's steps/ does not hold.
        complete = min(int((c.end <= t_ns).all(axis=1).sum()), int(self.written.min()))
        if complete == 0:
            return
        part = c.slice(0, complete)
        doc = truth_doc(
            self.model,
            part,
            start_ns=self.start_ns,
            job=self.job,
            extra={**run_parameters(self.opts), "live": True},
        )
        write_truth(self.layout.truth_path, doc)


def run_live(opts: SimOptions, out: Path, seconds: float = 0.0, clock: Any = time.time_ns) -> LiveRun:
    """Advance ``out`` once a second until SIGINT/SIGTERM (or for ``seconds`` when > 0)."""
    prepare_out(out)
    start_ns = int(clock())
    run = LiveRun(opts, out, start_ns)
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after this tick", signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        tick = 0
        while not stop.is_set():
            now = int(clock())
            run.tick(now - start_ns)
            if tick == 0:
                log.info("live: %d nodes under %s", opts.nodes, out / "nodes")
            tick += 1
            if seconds > 0 and now - start_ns >= seconds * NS:
                break
            # Wake on the next whole second after the start, so ticks stay 1 s apart.
            wait = 1.0 - ((int(clock()) - start_ns) / NS) % 1.0
            stop.wait(wait)
        run.finish(int(clock()) - start_ns)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return run
