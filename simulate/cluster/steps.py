"""Step records of the simulated job, one JSONL file per rank, in the documented format.

Lines are formatted directly (not through ``json.dumps``): the fields are plain integers,
fixed decimal seconds and names escaped once per file by ``json.dumps``, which keeps the
64-node, 1,000-step benchmark well inside its budget. Phase seconds are printed from the
integer nanosecond boundaries, so the phases of a step add up exactly to ``end_ns - start_ns``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fmdiag.simulate.cluster.model import Chunk, ClusterModel
from fmdiag.steprecord import FORMAT_VERSION, file_name


def _seconds(ns: np.ndarray) -> list[str]:
    """Fixed 9-decimal seconds from integer nanoseconds, exact."""
    whole, frac = np.divmod(ns.astype(np.int64), 1_000_000_000)
    return [f"{w}.{f:09d}" for w, f in zip(whole.tolist(), frac.tolist(), strict=True)]


def _literal(text: str) -> str:
    """``text`` as a JSON string literal (job and host names are user input: escape them)."""
    return json.dumps(text)


def rank_lines(model: ClusterModel, chunk: Chunk, rank: int, start_ns: int, job: str) -> Iterator[str]:
    """The JSONL lines of one rank's steps in ``chunk``."""
    topo, wl = model.topo, model.wl
    node, local = topo.place(rank)
    head = (
        f'{{"v":{FORMAT_VERSION},"job":{_literal(job)},"rank":{rank},"node":{_literal(topo.hostnames[node])},'
    )
    if model.plan is not None or wl.tp > 1 or wl.ep > 1:  # ranks of a 2D/3D layout say where they sit
        head += "".join(f'"{k}":{v},' for k, v in model.layout(rank).items())
    phases = chunk.phases()
    has_ckpt = (phases["checkpoint"][:, rank] > 0).tolist()
    steps = chunk.steps.tolist()
    starts = (chunk.start[:, rank] + start_ns).tolist()
    ends = (chunk.end[:, rank] + start_ns).tolist()
    samples = wl.samples_per_rank
    tail = f'"tokens":{samples * wl.tokens_per_sample},"samples":{samples}}}\n'
    dw, fw, bw, cm, op, ck = (_seconds(ns[:, rank]) for ns in phases.values())
    for i, step in enumerate(steps):
        ckpt = f'"checkpoint":{ck[i]},' if has_ckpt[i] else ""
        yield (
            f'{head}"step":{step},"start_ns":{starts[i]},"end_ns":{ends[i]},"local_rank":{local},'
            f'"data_wait":{dw[i]},"forward":{fw[i]},"backward":{bw[i]},"comm_exposed":{cm[i]},'
            f'"optimizer":{op[i]},{ckpt}{tail}'
        )


def write_steps(
    out: Path, model: ClusterModel, chunk: Chunk, start_ns: int, job: str, append: bool = False
) -> list[Path]:
    """Write (or append) every rank's records under ``out``; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank in range(model.hw.world_size):
        path = out / file_name(job, rank)
        with open(path, "a" if append else "w", encoding="utf-8") as f:
            f.write("".join(rank_lines(model, chunk, rank, start_ns, job)))
        paths.append(path)
    return paths
