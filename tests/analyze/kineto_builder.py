"""Build Kineto traces in PyTorch's real format, for tests and for benchmark inputs.

What a DDP step of a real trace holds (DOMAIN.md, "What real Kineto traces contain"): a
``ProfilerStep#N`` user annotation on the main thread; nested ``aten::`` ops (``aten::linear`` >
``aten::matmul`` > ``aten::mm``) in forward on the main thread and in backward on the autograd
thread; ``cudaLaunchKernel`` runtime calls linked to kernels on compute stream 7 by
``correlation`` with ``ac2g`` flows; DDP bucket ``Memcpy DtoD`` copies and ``ncclDevKernel_*``
all-reduces on stream 20 overlapping backward compute, with ``record_param_comms`` ops and
``nccl:all_reduce`` GPU annotations; ``cudaEventRecord``/``cudaStreamWaitEvent`` calls; a
``Trace`` span, ``Iteration Start`` instants, process/thread metadata, ``traceName`` last.
Written with a space after each colon (``"rank": 0``), as PyTorch does.

Options switch on the variations the reader must survive: old category names, no
``distributedInfo``, no ``baseTimeNanoseconds``, ``ncclKernel_*`` names, kernels in a CUDA graph,
two GPUs in one file, a CPU-only trace. Everything is deterministic for a seed, and the expected
HTA-style numbers are computed by the tests from the events, not hard-coded here.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAIN_TID, AUTOGRAD_TID = 1001, 1002
PID = 4242
COMPUTE_STREAM, NCCL_STREAM = 7, 20
NEW_NCCL = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
OLD_NCCL = "ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)"
COMPUTE_KERNELS = (
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off",
    "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl<"
    "at::native::AddFunctor<float> > >(int, T3)",
    "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl("
    "at::TensorIteratorBase&)>",
    "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>(T1::Params)",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, "
    "at::native::MeanOps<float, float> > >(T3)",
)


@dataclass
class Options:
    rank: int = 0
    world_size: int = 8
    steps: int = 4
    layers: int = 6
    seed: int = 0
    old_categories: bool = False
    distributed_info: bool = True
    base_time: bool = True
    nccl_name: str = NEW_NCCL
    cuda_graph: bool = False
    devices: int = 1
    cpu_only: bool = False
    #: Host stalls between launches (µs) that leave the GPU waiting: the host-wait idle.
    host_stall_us: float = 40.0
    #: Kernels queued behind each other: the typical sub-µs to few-µs gaps.
    partial_last_step: bool = True


class _Writer:
    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.rng = random.Random(opts.seed * 1009 + opts.rank)
        self.events: list[dict[str, Any]] = []
        self.corr = 0
        self.ext = 0
        self.gpu_free: dict[tuple[int, int], float] = {}
        cats = (
            ("Kernel", "Runtime", "Memcpy")
            if opts.old_categories
            else ("kernel", "cuda_runtime", "gpu_memcpy")
        )
        self.cat_kernel, self.cat_runtime, self.cat_memcpy = cats

    def x(
        self, cat: str, name: str, pid: int, tid: int, ts: float, dur: float, **args: Any
    ) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "ph": "X",
            "cat": cat,
            "name": name,
            "pid": pid,
            "tid": tid,
            "ts": round(ts, 3),
            "dur": round(dur, 3),
        }
        if args:
            ev["args"] = args
        self.events.append(ev)
        return ev

    def cpu_op(self, name: str, tid: int, ts: float, dur: float, seq: int | None = None) -> None:
        self.ext += 1
        args: dict[str, Any] = {"External id": self.ext, "Record function id": 0, "Ev Idx": self.ext}
        if seq is not None:
            args["Sequence number"] = seq
            args["Fwd thread id"] = 0 if tid == MAIN_TID else 1
        self.x("cpu_op", name, PID, tid, ts, dur, **args)

    def launch(
        self,
        tid: int,
        ts: float,
        name: str,
        dur_us: float,
        stream: int,
        *,
        cat: str = "",
        runtime: str = "cudaLaunchKernel",
        device: int = 0,
        graph_kernels: int = 0,
    ) -> float:
        """A runtime call at ``ts`` launching a kernel (or a graph of kernels).

        Returns the host's next free time.
        """
        self.corr += 1
        corr = self.corr
        rt_dur = 4.0 + self.rng.random() * 3
        self.x(
            self.cat_runtime,
            runtime,
            PID,
            tid,
            ts,
            rt_dur,
            cbid=211,
            correlation=corr,
            **{"External id": self.ext},
        )
        if self.o.cpu_only:
            return ts + rt_dur
        count = max(1, graph_kernels)
        start = max(ts + rt_dur + 2.0, self.gpu_free.get((device, stream), 0.0))
        for i in range(count):
            kname = name if count == 1 else COMPUTE_KERNELS[i % len(COMPUTE_KERNELS)]
            dur = dur_us if count == 1 else dur_us / count
            kcat = cat or self.cat_kernel
            ev = self.x(
                kcat,
                kname,
                device,
                stream,
                start,
                dur,
                **{
                    "External id": self.ext,
                    "queued": 0,
                    "device": device,
                    "context": 1,
                    "stream": stream,
                    "correlation": corr,
                    "registers per thread": 128,
                    "grid": [132, 1, 1],
                    "block": [384, 1, 1],
                },
            )
            if kname.startswith("nccl"):
                ev["args"].update(
                    {
                        "Collective name": "allreduce",
                        "In msg nelems": 6553600,
                        "Out msg nelems": 6553600,
                        "Group size": self.o.world_size,
                        "dtype": "BFloat16",
                        "Process Group Name": "0",
                    }
                )
            start += dur + self.rng.choice((0.6, 0.8, 1.1, 2.4))
        self.gpu_free[(device, stream)] = start
        self.events.append(
            {"ph": "s", "id": corr, "pid": PID, "tid": tid, "ts": round(ts, 3), "cat": "ac2g", "name": "ac2g"}
        )
        self.events.append(
            {
                "ph": "f",
                "id": corr,
                "pid": device,
                "tid": stream,
                "ts": round(ts + rt_dur + 2, 3),
                "cat": "ac2g",
                "name": "ac2g",
                "bp": "e",
            }
        )
        return ts + rt_dur + 1.0

    def step(self, n: int, t0: float, device: int) -> float:
        o, rng = self.o, self.rng
        body_start = t0
        self.events.append(
            {"ph": "i", "s": "t", "name": "Iteration Start", "pid": PID, "tid": MAIN_TID, "ts": round(t0, 3)}
        )
        t = t0 + 30.0
        self.cpu_op("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", MAIN_TID, t, 120.0)
        t += 125.0
        t = self.launch(
            MAIN_TID,
            t,
            "Memcpy HtoD (Pinned -> Device)",
            90.0,
            COMPUTE_STREAM,
            cat=self.cat_memcpy,
            runtime="cudaMemcpyAsync",
            device=device,
        )
        for seq in range(1, o.layers + 1):
            op_start = t
            if o.cuda_graph:
                t = self.launch(
                    MAIN_TID,
                    t,
                    "",
                    400.0,
                    COMPUTE_STREAM,
                    runtime="cudaGraphLaunch",
                    device=device,
                    graph_kernels=4,
                )
            else:
                for k in range(3):
                    t = self.launch(
                        MAIN_TID,
                        t,
                        COMPUTE_KERNELS[k],
                        40 + rng.random() * 160,
                        COMPUTE_STREAM,
                        device=device,
                    )
            if rng.random() < 0.3:
                t += o.host_stall_us + rng.random() * 50
            self.cpu_op("aten::linear", MAIN_TID, op_start - 1, t - op_start + 2, seq)
            self.cpu_op("aten::matmul", MAIN_TID, op_start - 0.5, t - op_start + 1)
            self.cpu_op("aten::mm", MAIN_TID, op_start, t - op_start)
        # backward on the autograd thread; one DDP bucket all-reduce per two layers, overlapping
        for layer in range(o.layers):
            op_start = t
            for k in (3, 0, 4):
                t = self.launch(
                    AUTOGRAD_TID,
                    t,
                    COMPUTE_KERNELS[k],
                    60 + rng.random() * 220,
                    COMPUTE_STREAM,
                    device=device,
                )
            self.cpu_op(
                "autograd::engine::evaluate_function: MmBackward0",
                AUTOGRAD_TID,
                op_start,
                t - op_start,
                layer,
            )
            if layer % 2 == 1:
                t = self.launch(
                    AUTOGRAD_TID,
                    t,
                    "Memcpy DtoD (Device -> Device)",
                    25.0,
                    COMPUTE_STREAM,
                    cat=self.cat_memcpy,
                    runtime="cudaMemcpyAsync",
                    device=device,
                )
                self.x(
                    self.cat_runtime,
                    "cudaEventRecord",
                    PID,
                    AUTOGRAD_TID,
                    t,
                    2.0,
                    cbid=135,
                    correlation=self.corr + 100000,
                )
                self.x(
                    self.cat_runtime,
                    "cudaStreamWaitEvent",
                    PID,
                    AUTOGRAD_TID,
                    t + 3,
                    2.0,
                    cbid=147,
                    correlation=self.corr + 100001,
                )
                self.gpu_free[(device, NCCL_STREAM)] = max(
                    self.gpu_free.get((device, NCCL_STREAM), 0.0),
                    self.gpu_free.get((device, COMPUTE_STREAM), 0.0),
                )
                self.cpu_op("record_param_comms", AUTOGRAD_TID, t + 6, 12.0)
                nccl_start = self.gpu_free[(device, NCCL_STREAM)]
                t = self.launch(
                    AUTOGRAD_TID, t + 6, o.nccl_name, 300 + rng.random() * 600, NCCL_STREAM, device=device
                )
                if not o.cpu_only:
                    self.x(
                        "gpu_user_annotation",
                        "nccl:all_reduce",
                        device,
                        NCCL_STREAM,
                        nccl_start,
                        self.gpu_free[(device, NCCL_STREAM)] - nccl_start,
                        **{"External id": self.ext, "device": device},
                    )
        t = self.launch(
            MAIN_TID,
            t + 5,
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel(Adam)",
            150.0,
            COMPUTE_STREAM,
            device=device,
        )
        end = max(t, *(v for (d, _s), v in self.gpu_free.items() if d == device)) + 20.0
        self.x(
            "user_annotation",
            f"ProfilerStep#{n}",
            PID,
            MAIN_TID,
            body_start,
            end - body_start,
            **{"External id": self.ext},
        )
        return end


def build(opts: Options) -> dict[str, Any]:
    """A whole trace document for ``opts``."""
    w = _Writer(opts)
    t = 1000.0 + opts.rank * 3.3
    first = 10
    for i in range(opts.steps):
        for device in range(opts.devices):
            t = w.step(first + i, t, device)
    if opts.partial_last_step and not opts.cpu_only:
        # the profiler stops mid-step: a short ProfilerStep with launches whose kernels are cut
        w.x("user_annotation", f"ProfilerStep#{first + opts.steps}", PID, MAIN_TID, t, 80.0)
        w.launch(MAIN_TID, t + 10, COMPUTE_KERNELS[0], 50.0, COMPUTE_STREAM)
    w.x("Trace", "PyTorch Profiler (0)", PID, MAIN_TID, 900.0, t - 900.0 + 100, **{"Op count": 0})
    w.events.append(
        {
            "ph": "i",
            "s": "t",
            "name": "Record Window End",
            "pid": PID,
            "tid": MAIN_TID,
            "ts": round(t + 90, 3),
        }
    )
    meta: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "ts": 0, "pid": PID, "tid": 0, "args": {"name": "python3"}},
        {"name": "process_labels", "ph": "M", "ts": 0, "pid": PID, "tid": 0, "args": {"labels": "CPU"}},
        {
            "name": "thread_name",
            "ph": "M",
            "ts": 0,
            "pid": PID,
            "tid": MAIN_TID,
            "args": {"name": "thread 1 (python3)"},
        },
        {
            "name": "thread_name",
            "ph": "M",
            "ts": 0,
            "pid": PID,
            "tid": AUTOGRAD_TID,
            "args": {"name": "thread 2 (pt_autograd_0)"},
        },
    ]
    for device in range(opts.devices):
        meta.append(
            {
                "name": "process_name",
                "ph": "M",
                "ts": 0,
                "pid": device,
                "tid": 0,
                "args": {"name": f"GPU {device}"},
            }
        )
        meta.append(
            {
                "name": "process_sort_index",
                "ph": "M",
                "ts": 0,
                "pid": device,
                "tid": 0,
                "args": {"sort_index": 5000000 + device},
            }
        )
    w.events.sort(key=lambda e: (e.get("ts", 0), e.get("pid", 0)))
    doc: dict[str, Any] = {
        "schemaVersion": 1,
        "deviceProperties": [
            {
                "id": d,
                "name": "NVIDIA H100 80GB HBM3",
                "totalGlobalMem": 85045870592,
                "computeMajor": 9,
                "computeMinor": 0,
                "numSms": 132,
            }
            for d in range(opts.devices)
        ],
    }
    if opts.distributed_info:
        doc["distributedInfo"] = {
            "backend": "nccl",
            "rank": opts.rank,
            "world_size": opts.world_size,
            "pg_count": 1,
            "nccl_version": "2.21.5",
            "pg_config": [
                {
                    "pg_name": "0",
                    "pg_desc": "default_pg",
                    "backend_config": "cuda:nccl",
                    "pg_size": opts.world_size,
                    "ranks": list(range(opts.world_size)),
                }
            ],
        }
    doc.update(
        {
            "record_shapes": 1,
            "with_stack": 0,
            "cuda_runtime_version": 12040,
            "cuda_driver_version": 12040,
            "trace_id": f"trace-{opts.rank}",
            "displayTimeUnit": "ms",
        }
    )
    if opts.base_time:
        doc["baseTimeNanoseconds"] = 1764000000000000000
    doc["traceEvents"] = meta + w.events
    doc["traceName"] = f"/tmp/traces/rank{opts.rank}.pt.trace.json"
    return doc


def write(path: Path, doc: dict[str, Any], *, compact: bool = False) -> Path:
    """Write ``doc`` as PyTorch does (``"key": value``, one event per line); gzip for a .gz name."""
    sep = (",", ":") if compact else (", ", ": ")
    head = {k: v for k, v in doc.items() if k not in ("traceEvents", "traceName")}
    parts = ["{\n"]
    for k, v in head.items():
        parts.append(f"  {json.dumps(k)}{sep[1]}{json.dumps(v, separators=sep)},\n")
    parts.append(f'  "traceEvents"{sep[1]}[\n')
    parts.append(",\n".join("  " + json.dumps(e, separators=sep) for e in doc["traceEvents"]))
    parts.append("\n  ]")
    if "traceName" in doc:
        parts.append(f',\n  "traceName"{sep[1]}{json.dumps(doc["traceName"])}')
    parts.append("\n}\n")
    text = "".join(parts).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text, 6) if path.name.endswith(".gz") else text)
    return path
