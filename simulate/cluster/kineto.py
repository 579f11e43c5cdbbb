"""PyTorch-profiler (Kineto) Chrome traces of simulated ranks, consistent with their step records.

Per step: a ``ProfilerStep#N`` annotation spanning the step; the dataloader's ``cpu_op``; the
batch's host-to-device ``Memcpy``; forward and backward compute kernels that exactly fill
those phases (back to back: the CPU launches far ahead of the GPU, as in a compute-bound
job); one NCCL all-reduce kernel on the communication stream from the moment this rank's
backward ends until the collective completes (so it includes the waiting for late ranks);
optimizer kernels and a ``Memset`` (zero_grad) filling the optimizer phase; the CPU then
blocks in ``cudaStreamSynchronize``. Every GPU event has its launching runtime call with the
same ``correlation`` and an ``ac2g`` flow pair. ``ts``/``dur`` are microseconds relative to
``baseTimeNanoseconds``. The step after the traced range is cut in its backward pass, as a
profiler stopping mid-step leaves it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmdiag import dumpformat
from fmdiag.simulate.cluster.model import Chunk, ClusterModel

NCCL_NEW = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)"
NCCL_OLD = "ncclKernel_AllReduce_RING_LL_Sum_bfloat16(ncclDevComm*, unsigned long, ncclWork*)"
NCCL_VERSION = "2.21.5"
COMPUTE_STREAM, COMM_STREAM = 7, 20
#: CUPTI callback ids of the runtime calls used.
CBID = {"cudaLaunchKernel": 211, "cudaMemcpyAsync": 41, "cudaMemsetAsync": 51, "cudaStreamSynchronize": 131}

_GEMM = (
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1"
    "_execute_segment_k_off_kernel__5x_cublas"
)
_GEMM_BWD = (
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_nt_n_tilesize128x128x64_warpgroupsize2x1x1"
    "_execute_segment_k_off_kernel__5x_cublas"
)
_FLASH_FWD = (
    "void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>, "
    "false, false, false, false, true, true, false, false>(Flash_fwd_params)"
)
_FLASH_BWD = (
    "void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128, 64, 128, 8, 2, 4, 2, "
    "false, false, cutlass::bfloat16_t>, false, false, false, false, false>(Flash_bwd_params)"
)
_LN = (
    "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>"
    "(int, float, c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, "
    "c10::BFloat16*)"
)
_LN_BWD = (
    "void at::native::(anonymous namespace)::layer_norm_grad_input_kernel_vectorized<c10::BFloat16, float>"
    "(c10::BFloat16 const*, c10::BFloat16 const*, float const*, float const*, c10::BFloat16 const*, "
    "c10::BFloat16*, int)"
)
_ADAM = (
    "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)"
    "::TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, "
    "(at::native::ADAM_MODE)1, false>, double*, double, double, double, double, double, bool, float*, "
    "float*>(at::native::(anonymous namespace)::TensorListMetadata<4>, at::native::(anonymous namespace)"
    "::FusedAdamMathFunctor<float, 4, (at::native::ADAM_MODE)1, false>, double*, double, double, double, "
    "double, double, bool, float*, float*)"
)

#: (cpu_op name, kernel name, share of the phase) for one repetition of a phase's pattern.
_FORWARD = (
    ("aten::layer_norm", _LN, 0.04),
    ("aten::linear", _GEMM, 0.36),
    ("aten::_scaled_dot_product_flash_attention", _FLASH_FWD, 0.24),
    ("aten::linear", _GEMM, 0.36),
)
_BACKWARD = (
    ("autograd::engine::evaluate_function: MmBackward0", _GEMM_BWD, 0.2),
    ("autograd::engine::evaluate_function: MmBackward0", _GEMM, 0.2),
    ("autograd::engine::evaluate_function: ScaledDotProductFlashAttentionBackward0", _FLASH_BWD, 0.26),
    ("autograd::engine::evaluate_function: MmBackward0", _GEMM_BWD, 0.15),
    ("autograd::engine::evaluate_function: MmBackward0", _GEMM, 0.15),
    ("autograd::engine::evaluate_function: NativeLayerNormBackward0", _LN_BWD, 0.04),
)
_OPTIMIZER = (("Optimizer.step#AdamW.step", _ADAM, 1.0),)
_REPEATS = {"forward": 3, "backward": 4, "optimizer": 4}
#: Host-side cost of one op and its launch (ns).
_OP_NS, _LAUNCH_NS, _LAUNCH_GAP_NS = 18_000, 6_000, 25_000
_H2D_BYTES_PER_S = 25e9
_MEMSET_NS = 30_000


@dataclass(frozen=True)
class KinetoOptions:
    ranks: tuple[int, ...]
    first_step: int = 0
    #: Steps traced whole: [first_step, last_step); the next one (if any) is cut mid-step.
    last_step: int | None = None
    nccl_naming: str = "new"  # new | old | alternate (even ranks new, odd ranks old)
    gzip: bool = False


def nccl_kernel_name(naming: str, rank: int) -> str:
    if naming == "new" or (naming == "alternate" and rank % 2 == 0):
        return NCCL_NEW
    if naming in ("old", "alternate"):
        return NCCL_OLD
    raise ValueError(f"nccl naming {naming!r}: expected new, old or alternate")


def _device_properties(model: ClusterModel) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "name": model.hw.gpu_name,
            "totalGlobalMem": 85_045_870_592,
            "computeMajor": 9,
            "computeMinor": 0,
            "maxThreadsPerBlock": 1024,
            "maxThreadsPerMultiprocessor": 2048,
            "regsPerBlock": 65536,
            "regsPerMultiprocessor": 65536,
            "warpSize": 32,
            "sharedMemPerBlock": 49152,
            "sharedMemPerMultiprocessor": 233472,
            "numSms": 132,
            "sharedMemPerBlockOptin": 232448,
        }
        for i in range(model.hw.gpus_per_node)
    ]


class _Trace:
    """Accumulates one rank's events; ids (correlation, External id) count up from 1."""

    def __init__(self, base_ns: int, host_pid: int, device: int) -> None:
        self.base = base_ns
        self.pid = host_pid
        self.device = device
        self.events: list[dict[str, Any]] = []
        self.corr = 0
        self.ext = 0
        self.cut: int | None = None

    def us(self, ns: int) -> float:
        return round((ns - self.base) / 1000, 3)

    def span(self, ns0: int, ns1: int) -> tuple[float, float]:
        return self.us(ns0), round((ns1 - ns0) / 1000, 3)

    def keep(self, end_ns: int) -> bool:
        return self.cut is None or end_ns <= self.cut

    def cpu(self, cat: str, name: str, ns0: int, ns1: int, args: dict[str, Any] | None = None) -> int:
        self.ext += 1
        if self.keep(ns1):
            ts, dur = self.span(ns0, ns1)
            self.events.append(
                {
                    "ph": "X",
                    "cat": cat,
                    "name": name,
                    "pid": self.pid,
                    "tid": self.pid,
                    "ts": ts,
                    "dur": dur,
                    "args": {"External id": self.ext, **(args or {})},
                }
            )
        return self.ext

    def launch(
        self, call: str, ns0: int, cat: str, name: str, k0: int, k1: int, stream: int, kargs: dict[str, Any]
    ) -> None:
        """A runtime call at ``ns0`` and the GPU event it starts at ``k0`` (flow-linked)."""
        self.corr += 1
        r1 = ns0 + _LAUNCH_NS
        if not (self.keep(r1) and self.keep(k1)):
            return
        c = self.corr
        ts, dur = self.span(ns0, r1)
        self.events.append(
            {
                "ph": "X",
                "cat": "cuda_runtime",
                "name": call,
                "pid": self.pid,
                "tid": self.pid,
                "ts": ts,
                "dur": dur,
                "args": {"External id": self.ext, "cbid": CBID[call], "correlation": c},
            }
        )
        kts, kdur = self.span(k0, k1)
        self.events.append(
            {
                "ph": "X",
                "cat": cat,
                "name": name,
                "pid": self.device,
                "tid": stream,
                "ts": kts,
                "dur": kdur,
                "args": {
                    "External id": self.ext,
                    "queued": 0,
                    "device": self.device,
                    "context": 1,
                    "stream": stream,
                    "correlation": c,
                    **kargs,
                },
            }
        )
        self.events.append(
            {"ph": "s", "id": c, "pid": self.pid, "tid": self.pid, "ts": ts, "cat": "ac2g", "name": "ac2g"}
        )
        self.events.append(
            {
                "ph": "f",
                "id": c,
                "pid": self.device,
                "tid": stream,
                "ts": kts,
                "cat": "ac2g",
                "name": "ac2g",
                "bp": "e",
            }
        )


def _split(total: int, shares: Sequence[float]) -> list[int]:
    """Integer durations with the given shares that add up exactly to ``total``."""
    w = np.asarray(shares, dtype=float)
    parts = np.floor(total * w / w.sum()).astype(np.int64)
    parts[-1] = total - int(parts[:-1].sum())
    return [int(x) for x in parts]


_KERNEL_ARGS = {
    "registers per thread": 168,
    "shared memory": 213_248,
    "blocks per SM": 1.0,
    "warps per SM": 12.0,
    "grid": [132, 1, 1],
    "block": [384, 1, 1],
    "est. achieved occupancy %": 19,
}


def rank_trace(
    model: ClusterModel, chunk: Chunk, rank: int, start_ns: int, opts: KinetoOptions
) -> dict[str, Any]:
    """The Kineto document for one rank."""
    hw, topo, wl = model.hw, model.topo, model.wl
    node, local = topo.place(rank)
    first = max(0, opts.first_step - int(chunk.steps[0]))
    last = chunk.nsteps if opts.last_step is None else min(chunk.nsteps, opts.last_step - int(chunk.steps[0]))
    if last <= first:
        raise ValueError(f"kineto steps {opts.first_step}:{opts.last_step} select no simulated step")
    abs_ = {
        k: getattr(chunk, k)[:, rank] + start_ns
        for k in ("start", "dw_end", "fwd_end", "arrive", "coll_end", "opt_end", "end")
    }
    base = int(abs_["start"][first]) - 1_000_000
    tr = _Trace(base, topo.pid(local), local)
    world = hw.world_size
    nelems = int(wl.grad_bytes // 2)
    nccl_name = nccl_kernel_name(opts.nccl_naming, rank)
    coll_args = {
        "Collective name": "allreduce",
        "In msg nelems": nelems,
        "Out msg nelems": nelems,
        "Group size": world,
        "dtype": "BFloat16",
        "In split size": "[]",
        "Out split size": "[]",
        "Process Group Name": "0",
        "Process Group Description": "default_pg",
    }
    stop = min(last + 1, chunk.nsteps)
    for i in range(first, stop):
        s0, dw1, f1, b1, c1, o1, e1 = (
            int(abs_[k][i]) for k in ("start", "dw_end", "fwd_end", "arrive", "coll_end", "opt_end", "end")
        )
        # The profiler stops in the middle of the step after the traced range.
        cut = f1 + (b1 - f1) // 2 if i == last else None
        tr.cut = None
        tr.cpu("user_annotation", f"ProfilerStep#{int(chunk.steps[i])}", s0, e1 if cut is None else cut)
        tr.cut = cut
        # Batch: dataloader wait, then the pinned host-to-device copy ending as forward starts.
        dw = dw1 - s0
        copy = min(
            int(wl.samples_per_rank * wl.sample_bytes / _H2D_BYTES_PER_S * 1e9),
            max((dw - 40_000) // 2, 1_000),
        )
        launch0 = dw1 - copy - 20_000
        tr.cpu(
            "cpu_op",
            "enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__",
            s0,
            max(launch0 - 2_000, s0),
        )
        tr.cpu("cpu_op", "aten::copy_", launch0, launch0 + _OP_NS)
        tr.launch(
            "cudaMemcpyAsync",
            launch0 + 2_000,
            "gpu_memcpy",
            "Memcpy HtoD (Pinned -> Device)",
            dw1 - copy,
            dw1,
            COMPUTE_STREAM,
            {
                "bytes": wl.samples_per_rank * wl.sample_bytes,
                "memory bandwidth (GB/s)": _H2D_BYTES_PER_S / 1e9,
            },
        )
        cpu_t = launch0 + _LAUNCH_GAP_NS
        # Forward and backward kernels fill their phases exactly.
        for phase, p0, p1 in (("forward", dw1, f1), ("backward", f1, b1)):
            pattern = (_FORWARD if phase == "forward" else _BACKWARD) * _REPEATS[phase]
            durs = _split(p1 - p0, [sh for _, _, sh in pattern])
            k0 = p0
            for (op, kernel, _), d in zip(pattern, durs, strict=True):
                tr.cpu("cpu_op", op, cpu_t, cpu_t + _OP_NS)
                tr.launch(
                    "cudaLaunchKernel",
                    cpu_t + 4_000,
                    "kernel",
                    kernel,
                    k0,
                    k0 + d,
                    COMPUTE_STREAM,
                    _KERNEL_ARGS,
                )
                k0 += d
                cpu_t += _LAUNCH_GAP_NS
        # The all-reduce: from this rank's arrival to the collective's end.
        tr.cpu("cpu_op", "record_param_comms", cpu_t, cpu_t + _OP_NS, coll_args)
        tr.cpu("cpu_op", "nccl:all_reduce", cpu_t + 1_000, cpu_t + _OP_NS - 1_000, coll_args)
        tr.launch(
            "cudaLaunchKernel",
            cpu_t + 4_000,
            "kernel",
            nccl_name,
            b1,
            c1,
            COMM_STREAM,
            {
                "registers per thread": 96,
                "shared memory": 0,
                "blocks per SM": 0.12,
                "warps per SM": 2.06,
                "grid": [16, 1, 1],
                "block": [544, 1, 1],
                "est. achieved occupancy %": 3,
                **coll_args,
            },
        )
        cpu_t += _LAUNCH_GAP_NS
        # Optimizer kernels after the collective, then zero_grad's memset.
        pattern = _OPTIMIZER * _REPEATS["optimizer"]
        memset = min(_MEMSET_NS, (o1 - c1) // 10)
        durs = _split(o1 - c1 - memset, [sh for _, _, sh in pattern])
        k0 = c1
        for (op, kernel, _), d in zip(pattern, durs, strict=True):
            tr.cpu("cpu_op", op, cpu_t, cpu_t + _OP_NS)
            tr.launch(
                "cudaLaunchKernel", cpu_t + 4_000, "kernel", kernel, k0, k0 + d, COMPUTE_STREAM, _KERNEL_ARGS
            )
            k0 += d
            cpu_t += _LAUNCH_GAP_NS
        tr.cpu("cpu_op", "aten::zero_", cpu_t, cpu_t + _OP_NS)
        tr.launch(
            "cudaMemsetAsync",
            cpu_t + 4_000,
            "gpu_memset",
            "Memset (Device)",
            k0,
            o1,
            COMPUTE_STREAM,
            {"bytes": int(wl.grad_bytes), "memory bandwidth (GB/s)": 0.0},
        )
        cpu_t += _LAUNCH_GAP_NS
        # The host waits for the GPU (loss.item()), then checkpoints on checkpoint steps.
        tr.corr += 1
        if tr.keep(o1):
            ts, dur = tr.span(cpu_t, o1)
            tr.events.append(
                {
                    "ph": "X",
                    "cat": "cuda_runtime",
                    "name": "cudaStreamSynchronize",
                    "pid": tr.pid,
                    "tid": tr.pid,
                    "ts": ts,
                    "dur": dur,
                    "args": {
                        "External id": tr.ext,
                        "cbid": CBID["cudaStreamSynchronize"],
                        "correlation": tr.corr,
                    },
                }
            )
        if e1 > o1:
            tr.cpu("cpu_op", "torch.distributed.checkpoint.save", o1, e1)
    return {
        "schemaVersion": 1,
        "deviceProperties": _device_properties(model),
        "distributedInfo": {
            "backend": "nccl",
            "rank": rank,
            "world_size": world,
            "pg_count": 1,
            "pg_config": [
                {
                    "pg_name": "0",
                    "pg_desc": "default_pg",
                    "backend_config": "cuda:nccl",
                    "pg_size": world,
                    "ranks": list(range(world)),
                }
            ],
            "nccl_version": NCCL_VERSION,
        },
        "cupti_version": 22,
        "cuda_runtime_version": 12040,
        "cuda_driver_version": 12040,
        "trace_id": f"{topo.hostnames[node]}_{tr.pid}",
        "displayTimeUnit": "ms",
        "baseTimeNanoseconds": base,
        "traceEvents": _metadata(tr, topo.hostnames[node], local) + tr.events,
    }


def _metadata(tr: _Trace, host: str, device: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "process_name",
            "ph": "M",
            "ts": 0.0,
            "pid": tr.pid,
            "tid": 0,
            "args": {"name": f"python3 ({host})"},
        },
        {
            "name": "thread_name",
            "ph": "M",
            "ts": 0.0,
            "pid": tr.pid,
            "tid": tr.pid,
            "args": {"name": "thread 1 (python3)"},
        },
        {
            "name": "process_name",
            "ph": "M",
            "ts": 0.0,
            "pid": device,
            "tid": 0,
            "args": {"name": f"GPU {device}"},
        },
        {
            "name": "thread_name",
            "ph": "M",
            "ts": 0.0,
            "pid": device,
            "tid": COMPUTE_STREAM,
            "args": {"name": f"stream {COMPUTE_STREAM}"},
        },
        {
            "name": "thread_name",
            "ph": "M",
            "ts": 0.0,
            "pid": device,
            "tid": COMM_STREAM,
            "args": {"name": f"stream {COMM_STREAM}"},
        },
    ]


def write_kineto(
    out: Path, model: ClusterModel, chunk: Chunk, start_ns: int, opts: KinetoOptions
) -> list[Path]:
    """One trace file per requested rank: ``rank<r>.json`` or ``rank<r>.json.gz``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank in opts.ranks:
        if not 0 <= rank < model.hw.world_size:
            raise ValueError(f"kineto rank {rank} is outside the job's ranks 0..{model.hw.world_size - 1}")
        doc = rank_trace(model, chunk, rank, start_ns, opts)
        data = json.dumps(doc, separators=(",", ":")).encode()
        if opts.gzip:
            path = out / dumpformat.kineto_file_name(rank, gzip=True)
            # mtime=0 and no file name in the header: the same trace gives the same bytes.
            path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
        else:
            path = out / dumpformat.kineto_file_name(rank)
            path.write_bytes(data)
        paths.append(path)
    return paths


def parse_ranks(text: str, world_size: int) -> tuple[int, ...]:
    """``"0,5"``, ``"0-3,8"`` or ``"all"`` as sorted rank numbers."""
    if text.strip() == "all":
        return tuple(range(world_size))
    ranks: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                ranks.update(range(lo, hi + 1))
            else:
                ranks.add(int(part))
        except ValueError:
            raise ValueError(f"--kineto {text!r}: {part!r} is not a rank, a range a-b or 'all'") from None
    bad = sorted(r for r in ranks if not 0 <= r < world_size)
    if bad:
        raise ValueError(f"--kineto {text!r}: rank(s) {bad} outside 0..{world_size - 1}")
    if not ranks:
        raise ValueError(f"--kineto {text!r}: no rank given")
    return tuple(sorted(ranks))
