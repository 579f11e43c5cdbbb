"""The rank program: start the loader, join the job, compile, then train and record each step.

Order matters for what the step records mean. The loader starts first (its pids go to the pid
file at once, so the orchestrator can put them in cgroups, and it prefetches while the rank
compiles). Every shape a step can have is compiled and run once before step 0, and the rank
reports ready only then, so no step record contains compile time. Each step's record is
written after its work, and a profiler window is closed only after its last record is written.

Phases: ``data_wait`` (next batches from the loader), ``forward`` and ``backward`` (compute,
waited for), ``comm_exposed`` (the data-parallel all-reduce, plus the time blocked in pipeline
receives), ``optimizer`` (Adam), ``checkpoint`` (synchronous, fsynced).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from fmdiag.steptrace import Step, StepTracer
from fmdiag.testbed import checkpoint
from fmdiag.testbed.allreduce import GradientAllReduce, layout_mesh
from fmdiag.testbed.loader import Loader
from fmdiag.testbed.model import (
    AdamState,
    ModelShape,
    Params,
    StageProgram,
    flat_numpy,
    init_stage,
    param_count,
    wait,
)
from fmdiag.testbed.p2p import Link
from fmdiag.testbed.pipeline import StageStep
from fmdiag.testbed.worker_config import WorkerConfig

_GO_POLL_S = 0.05
#: jax.distributed's wait for the other ranks at shutdown (its default is 5 minutes).
_SHUTDOWN_TIMEOUT_S = 60


@dataclass
class Summary:
    steps: int
    ready_s: float
    compile_s: float
    first_loss: float
    last_loss: float
    gradient_bytes: int


def write_pid_file(cfg: WorkerConfig, loader_pids: list[int], *, ready: bool) -> None:
    """{"rank", "pid", "loader_pids", "ready"}, atomically (write a temporary file, rename)."""
    path = Path(cfg.pid_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    doc = {"rank": cfg.rank, "pid": os.getpid(), "loader_pids": loader_pids, "ready": ready}
    tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _join_job(cfg: WorkerConfig) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # type: ignore[no-untyped-call]
    jax.distributed.initialize(
        cfg.coordinator,
        num_processes=cfg.world,
        process_id=cfg.rank,
        initialization_timeout=cfg.init_timeout_s,
        shutdown_timeout_seconds=_SHUTDOWN_TIMEOUT_S,
        # Rank 0 serves the coordinator on the given address only, not on every interface.
        coordinator_bind_address=cfg.coordinator if cfg.rank == 0 else None,
    )
    # initialize() puts JAX's preemption notifier on SIGTERM, which only takes note of it: give
    # SIGTERM back to the handler the process had (the worker's unwinds the rank cleanly).
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _connect_pipeline(cfg: WorkerConfig, stack: contextlib.ExitStack) -> tuple[Link | None, Link | None]:
    """(link to the previous stage, link to the next). Bind first, then connect onwards, then
    accept: the chain of stages cannot wait on itself."""
    hello = f"{cfg.job}/dp{cfg.dp_rank}"
    server = Link.listen(cfg.p2p_listen) if cfg.pp_rank > 0 and cfg.p2p_listen else None
    nxt = None
    if cfg.pp_rank < cfg.pp - 1 and cfg.p2p_peer:
        nxt = stack.enter_context(Link.connect(cfg.p2p_peer, hello=hello, timeout=cfg.p2p_timeout_s))
    prev = None
    if server is not None and cfg.p2p_listen:
        prev = stack.enter_context(
            Link.accept(server, cfg.p2p_listen, hello=hello, timeout=cfg.p2p_timeout_s)
        )
    return prev, nxt


class Rank:
    """This rank's model stage, optimizer state and collectives."""

    def __init__(self, cfg: WorkerConfig, loader: Loader, prev: Link | None, nxt: Link | None) -> None:
        self.cfg, self.loader = cfg, loader
        self.shape = ModelShape(cfg.vocab, cfg.d_model, cfg.heads, cfg.seq_len, tuple(cfg.stage_layers))
        padded = max(param_count(self.shape, s) for s in range(cfg.pp))
        self.program = StageProgram(self.shape, cfg.pp_rank, padded_size=padded, lr=cfg.lr, dp=cfg.dp)
        self.allreduce = GradientAllReduce(layout_mesh(cfg.pp, cfg.dp, cfg.pp_rank, cfg.dp_rank), padded)
        self.stage_step = StageStep(self.program, prev=prev, next_stage=nxt)
        # Everything lives committed on this process's device from the start: jit caches
        # committed and uncommitted arguments apart, and a mix would recompile in step 0 or 1.
        self.device = jax.local_devices()[0]
        self.params = self._fresh_params()
        self.adam = self._fresh_adam()

    def _fresh_adam(self) -> AdamState:
        state: AdamState = jax.device_put(AdamState.zeros(self.program.size), self.device)
        return state

    def _fresh_params(self) -> Params:
        params: Params = jax.device_put(init_stage(self.shape, self.cfg.pp_rank, self.cfg.seed), self.device)
        return params

    def warm_up(self) -> None:
        """Compile every shape a step can have by running the step's own calls once per sequence
        length (pipeline sends and the all-reduce included, so every rank takes part), then
        start over from the initial parameters. Running the real calls, not just lowering them,
        also settles what jit caches on besides shapes (committed or not, donated buffers)."""
        cfg = self.cfg
        for k, length in enumerate(cfg.lengths()):
            batch = np.zeros((cfg.batch, cfg.seq_len + 1), np.int32)
            inputs = [batch[:, :length]] * cfg.micro_batches
            targets = [batch[:, 1 : length + 1]] * cfg.micro_batches
            flat, _ = self.stage_step.run(-1 - k, self.params, inputs, targets, Step(-1))
            summed = self.allreduce.reduce(flat)
            self.params, self.adam = self.program.update(self.params, self.adam, summed)
            wait(self.params)
        self.params, self.adam = self._fresh_params(), self._fresh_adam()

    def step(self, step: int, tracer: StepTracer) -> float:
        """Train one step and write its record; returns the mean loss (nan off the last stage)."""
        cfg = self.cfg
        length = cfg.step_seq_len(step)
        record = tracer.begin_step(step)
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            with record.phase("data_wait"):
                batches = [self.loader.next() for _ in range(cfg.micro_batches)]
            made_ns = self.loader.last_made_ns
            inputs = [b[:, :length] for b in batches]
            targets = [b[:, 1 : length + 1] for b in batches]
            flat, losses = self.stage_step.run(step, self.params, inputs, targets, record)
            with record.phase("comm_exposed"):
                summed = self.allreduce.reduce(flat)
                summed.block_until_ready()
            with record.phase("optimizer"):
                self.params, self.adam = self.program.update(self.params, self.adam, summed)
                wait(self.params)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                with record.phase("checkpoint"):
                    self.save(step)
        samples = cfg.micro_batches * cfg.batch
        tracer.end_step(tokens=samples * length, samples=samples)
        if cfg.batch_log:
            with open(cfg.batch_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "made_ns": made_ns}) + "\n")
        return float(np.mean([float(loss) for loss in losses])) if losses else math.nan

    def save(self, step: int) -> None:
        arrays = {
            "params": flat_numpy(self.params),
            "adam_m": np.asarray(self.adam.m),
            "adam_v": np.asarray(self.adam.v),
            "adam_t": np.asarray(self.adam.t),
        }
        checkpoint.save(self.cfg.checkpoint_dir, self.cfg.rank, step, arrays)


class ProfilerWindow:
    """jax.profiler over steps [trace_first_step, + trace_steps): started before the window's
    first step begins and stopped after its last step's record is written, so neither the
    start nor the write-out of the trace lands inside a step."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg, self.active = cfg, False

    def before(self, step: int) -> None:
        if self.cfg.trace_dir and self.cfg.traced(step) and not self.active:
            Path(self.cfg.trace_dir).mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(self.cfg.trace_dir, create_perfetto_trace=False)
            self.active = True

    def after(self, step: int) -> None:
        if self.active and not self.cfg.traced(step + 1):
            self.close()

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()  # type: ignore[no-untyped-call]


def _wait_for_go(cfg: WorkerConfig) -> None:
    if cfg.go_file:
        while not os.path.exists(cfg.go_file):
            time.sleep(_GO_POLL_S)


def run(cfg: WorkerConfig, log: Callable[[str], None]) -> Summary:
    """Everything a rank does, from start to a clean exit; raises on any failure."""
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        loader = stack.enter_context(
            Loader(
                cfg.data_dir,
                dp=cfg.dp,
                dp_rank=cfg.dp_rank,
                batch=cfg.batch,
                seq_len=cfg.seq_len,
                vocab=cfg.vocab,
                workers=cfg.loader_workers,
                prefetch=cfg.prefetch,
                decode_rounds=cfg.decode_rounds,
                seed=cfg.seed,
            ).start()
        )
        write_pid_file(cfg, loader.pids, ready=False)
        _join_job(cfg)
        prev, nxt = _connect_pipeline(cfg, stack)
        rank = Rank(cfg, loader, prev, nxt)
        t_compile = time.monotonic()
        rank.warm_up()
        compile_s = time.monotonic() - t_compile
        write_pid_file(cfg, loader.pids, ready=True)
        log(
            f"ready in {time.monotonic() - t0:.1f} s (compile and warm-up {compile_s:.1f} s); "
            f"stage {cfg.pp_rank} has {rank.program.size} parameters, "
            f"all-reduce {rank.allreduce.nbytes} bytes"
        )
        ready_s = time.monotonic() - t0
        _wait_for_go(cfg)
        layout = {"dp_rank": cfg.dp_rank, "pp_rank": cfg.pp_rank, "tp_rank": 0}
        tracer = stack.enter_context(
            StepTracer(
                cfg.spool_dir,
                job=cfg.job,
                rank=cfg.rank,
                local_rank=cfg.local_rank,
                node=cfg.node,
                layout=layout,
            )
        )
        window = ProfilerWindow(cfg)
        stack.callback(window.close)
        losses = []
        for step in range(cfg.steps):
            window.before(step)
            losses.append(rank.step(step, tracer))
            window.after(step)
        # Every rank finishes its sends before anyone leaves the job.
        for link in (prev, nxt):
            if link is not None:
                link.flush(cfg.p2p_timeout_s)
    jax.distributed.shutdown()  # type: ignore[no-untyped-call]
    return Summary(
        steps=cfg.steps,
        ready_s=ready_s,
        compile_s=compile_s,
        first_loss=losses[0] if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan,
        gradient_bytes=4 * rank.program.size,
    )
