"""The contract between the test bed's orchestrator and one rank: a plain JSON file per rank.

The orchestrator writes one file per rank and starts ``python -m fmdiag.testbed.worker FILE``
inside the rank's node; the rank reads it and nothing else (no environment variables, no
flags), so a run can be replayed from its config files alone. Defaults live here and only here
(``WorkerConfig.defaults()``): they size a healthy step at roughly half a second with four
ranks sharing two cores, a gradient of a few MB, and a loader that keeps ahead of training.

This module is imported by the orchestrator, so it uses the standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WorkerConfig:
    # --- who this rank is and where the job meets ---------------------------------------
    job: str = "testbed"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    node: str = "node0"
    #: "ADDR:PORT" of jax.distributed's coordinator; rank 0 hosts it on exactly this address.
    coordinator: str = "127.0.0.1:12340"
    #: Seconds jax.distributed.initialize waits for every rank to join.
    init_timeout_s: int = 300

    # --- parallel layout ----------------------------------------------------------------
    pp: int = 1
    pp_rank: int = 0
    dp: int = 1
    dp_rank: int = 0
    #: Transformer layers per pipeline stage (len == pp); they sum to ``layers``.
    stage_layers: list[int] = field(default_factory=lambda: [4])
    layers: int = 4
    #: "ADDR:PORT" this rank listens on for its previous stage (pp_rank > 0).
    p2p_listen: str | None = None
    #: "ADDR:PORT" of the next stage's p2p_listen (pp_rank < pp - 1).
    p2p_peer: str | None = None
    #: Seconds to wait for the pipeline neighbour to connect, and for any one receive.
    p2p_timeout_s: float = 300.0

    # --- model and batch ----------------------------------------------------------------
    vocab: int = 2048
    d_model: int = 128
    heads: int = 4
    #: The longest sequence (the data set must hold at least seq_len + 1 tokens per sample).
    seq_len: int = 128
    #: Sequences per micro-batch.
    batch: int = 4
    micro_batches: int = 2
    #: None: every sequence is seq_len long. Else each step's length is drawn from these per
    #: (seed, step, dp_rank): the slowest data-parallel group moves from step to step.
    seq_buckets: list[int] | None = None
    steps: int = 40
    seed: int = 0
    lr: float = 3e-4

    # --- input pipeline -----------------------------------------------------------------
    data_dir: str = "data"
    loader_workers: int = 2
    #: Batches decoded ahead of training, over all loader workers together.
    prefetch: int = 4
    #: Rounds of numeric work per decoded sample (the CPU cost of decoding).
    decode_rounds: int = 2

    # --- outputs ------------------------------------------------------------------------
    #: Write a checkpoint after every N-th step (0: never).
    checkpoint_every: int = 0
    checkpoint_dir: str = "checkpoints"
    #: The steptrace spool of this rank's node.
    spool_dir: str = "spool"
    #: jax.profiler output for steps [trace_first_step, trace_first_step + trace_steps); None: no trace.
    trace_dir: str | None = None
    trace_first_step: int = 0
    trace_steps: int = 0
    #: {"rank", "pid", "loader_pids", "ready"}, written atomically once the loader runs and
    #: again with ready=true once everything is compiled.
    pid_file: str = "rank.pid.json"
    #: When set, the rank waits after compiling (ready=true) until this file exists.
    go_file: str | None = None
    #: When set, one JSON line per step: {"step", "made_ns"} (when the step's last batch was
    #: ready in its loader worker), for the test bed's truth about faults of the input path.
    batch_log: str | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("worker config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every inconsistency, so one error message names them all."""
        out: list[str] = []
        if not 0 <= self.rank < self.world:
            out.append(f"rank {self.rank} is not in [0, world={self.world})")
        if self.pp < 1 or self.dp < 1 or self.pp * self.dp != self.world:
            out.append(f"pp {self.pp} x dp {self.dp} must be world {self.world}")
        if not 0 <= self.pp_rank < self.pp:
            out.append(f"pp_rank {self.pp_rank} is not in [0, pp={self.pp})")
        if not 0 <= self.dp_rank < self.dp:
            out.append(f"dp_rank {self.dp_rank} is not in [0, dp={self.dp})")
        if len(self.stage_layers) != self.pp or min(self.stage_layers, default=0) < 1:
            out.append(f"stage_layers {self.stage_layers}: one entry >= 1 per pipeline stage (pp={self.pp})")
        elif sum(self.stage_layers) != self.layers:
            out.append(f"stage_layers {self.stage_layers} do not sum to layers={self.layers}")
        if self.pp_rank > 0 and not self.p2p_listen:
            out.append(f"pp_rank {self.pp_rank} needs p2p_listen (its previous stage connects to it)")
        if self.pp_rank < self.pp - 1 and not self.p2p_peer:
            out.append(f"pp_rank {self.pp_rank} needs p2p_peer (the next stage's p2p_listen)")
        for name in ("coordinator", "p2p_listen", "p2p_peer"):
            value = getattr(self, name)
            if value is not None:
                try:
                    split_address(value)
                except ValueError as exc:
                    out.append(f"{name}: {exc}")
        if self.d_model % self.heads:
            out.append(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        for name in ("vocab", "seq_len", "batch", "micro_batches", "steps", "loader_workers", "prefetch"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1")
        for name in ("decode_rounds", "checkpoint_every", "trace_first_step", "trace_steps", "seed"):
            if getattr(self, name) < 0:
                out.append(f"{name} must not be negative")
        if self.seq_buckets is not None and (
            not self.seq_buckets or not all(1 <= b <= self.seq_len for b in self.seq_buckets)
        ):
            out.append(f"seq_buckets {self.seq_buckets}: lengths from 1 to seq_len={self.seq_len}")
        return out

    # --- what the rank and the orchestrator both derive from it -------------------------
    def step_seq_len(self, step: int) -> int:
        """This step's sequence length: the same on every stage of a pipeline (their shapes
        must match), drawn independently per data-parallel group, so the orchestrator can
        recompute which group had the longest sequences on any step."""
        if not self.seq_buckets:
            return self.seq_len
        return random.Random(f"fmdiag.testbed/{self.seed}/{step}/{self.dp_rank}").choice(self.seq_buckets)

    def lengths(self) -> list[int]:
        """Every sequence length a step can have (each is compiled before step 0)."""
        return sorted(set(self.seq_buckets)) if self.seq_buckets else [self.seq_len]

    def traced(self, step: int) -> bool:
        return (
            bool(self.trace_dir) and self.trace_first_step <= step < self.trace_first_step + self.trace_steps
        )

    # --- JSON -------------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> WorkerConfig:
        return cls()

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (a reader never sees half a config)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, target)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> WorkerConfig:
        unknown = sorted(set(doc) - cls.field_names())
        if unknown:
            raise ValueError(f"worker config: unknown field(s) {', '.join(unknown)}")
        values = dict(doc)
        for name in ("stage_layers", "seq_buckets"):
            if values.get(name) is not None:
                values[name] = [int(x) for x in values[name]]
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> WorkerConfig:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"worker config {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"worker config {path}: not a JSON object")
        return cls.from_dict(doc)


def split_address(address: str) -> tuple[str, int]:
    """("ADDR", PORT) from "ADDR:PORT" (IPv6 as "[ADDR]:PORT")."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not ADDR:PORT")
    return host.strip("[]"), int(port)
