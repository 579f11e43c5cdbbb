"""fmdiag's Kineto breakdown against Holistic Trace Analysis, side by side on the same traces.

For the same ``kineto/`` folder runs, as separate processes, once unmeasured and then
alternately ``--runs`` times each:

- HTA (PyPI ``traceinsight`` 0.6.1, import ``hta``, in its own virtual environment):
  ``TraceAnalysis(trace_dir=...)``, then ``get_temporal_breakdown``, ``get_comm_comp_overlap``
  and ``get_idle_time_breakdown`` for every rank;
- fmdiag: ``fmdiag analyze DUMP --hta-compatible --json`` (its own per-step breakdown plus HTA's
  numbers by HTA's definitions), with a bytecode cache as an installed fmdiag has (pip compiled
  HTA's; a checkout under ``PYTHONDONTWRITEBYTECODE=1`` would compile fmdiag on every run, ~0.07 s).

It measures wall time and peak memory — of the largest process and of all the processes of the
run together (HTA's fork workers), sampled every 10 ms with psutil — prints medians, the ratios
HTA/fmdiag, and both sets of numbers per rank side by side with their relative difference,
flagging any above 0.5% (the target; HTA rounds fractional µs, which --hta-compatible copies).
A side that fails is reported, not dropped: HTA as "crashed in CALL: the exception's last line",
fmdiag as "refused: its message" (or "crashed" with a traceback).

Inputs, one folder: ``--traces DIR``, else ``--source simulator`` (default: ``fmdiag simulate
--scenario network-node --nodes 2 --gpus 4 --kineto all --kineto-gzip``, 8 ranks) or ``--source
builder`` (tests/analyze/kineto_builder.py, PyTorch's format with DDP buckets).

Real traces, each its own case: ``--real DIR``. Each trace file of DIR (``.json``/``.json.gz``) is
copied into a dump of its own (``WORKDIR/real/NAME/kineto/``); each sub-folder of DIR holding
traces is one multi-rank case. Per case it prints events and ranks, both times and peak memories,
the ratios, and every HTA-compatible number per rank (kernel time, idle, compute, non-compute,
comm/comp overlap, each idle-breakdown row); then a summary table::

    python benchmarks/analyze_vs_hta.py --real /tmp/rt --runs 3 --hta-python /path/to/bin/python

Without ``--hta-python`` a virtual environment is made under ``--workdir`` with
``traceinsight==0.6.1`` and ``pandas>=2,<3``: under pandas 3, HTA 0.6.1 crashes at load on
traces whose correlation ids all fit in int16 while they hold more events than that (it
downcasts ``correlation`` to int16, copies it to ``index_correlation`` and then stores event
indices above 32,767 there: ``TypeError: Invalid value '[34850 ...]' for dtype 'int16'``, seen
on a tb_plugin ResNet trace with its correlation ids renumbered from 1); pandas 2 upcasts the
column and HTA runs, with the same numbers as pandas 3 on every trace both read. numpy 2 is fine.
No assertions: machines are noisy.

Measured on this machine (2 CPUs, shared: timings vary by ±30%), median of 3:

- ``--source simulator`` (8 ranks, 56k events a rank, 118.8 MB): HTA 17.2 s, fmdiag 1.55 s:
  11.0x faster, 11.2x less memory (all processes; 5.3x the largest one); 0.000% difference.
- ``--real`` on public traces (HTA's own test traces, MIT; PyTorch kineto tb_plugin's ResNet-50
  samples, BSD; DeepSeek's train.json; ``trace_filter_pair``: HTA's two sampled ranks as one
  two-rank case; memory: HTA's peak over fmdiag's, all processes):

    ==================================  ======  =====  ======  =====  ======  ========
    case                                events  HTA s  fmdiag  ratio  memory  max diff
    ==================================  ======  =====  ======  =====  ======  ========
    ds_train.json (DeepSeek)             14240   2.43    0.62   3.9x    3.3x    0.000%
    HTA amd_trace (ROCm 6.2, MI250)        220   2.05    0.51   4.0x    2.9x    0.000%
    HTA critical_path alexnet             1408   1.63    0.38   4.3x    2.9x    0.000%
    HTA cupti_profiler                    4222  crash    0.45      -       -         -
    HTA distributed_info_unavailable      2467  crash    0.74      -       -         -
    HTA gpu_user_annotation               1344   1.35    0.34   3.9x    3.0x    0.000%
    HTA mtia_inference rank_0            16158   2.39    0.44   5.5x    3.5x    0.000%
    HTA nccl_parser_config               40573   2.55    0.46   5.6x    3.8x    0.000%
    HTA negative_queue_length rank0     108936   4.35    0.46   9.5x    5.3x    0.000%
    HTA ns_resolution rank-0             68692   3.14    0.62   5.1x    4.2x    0.000%
    HTA trace_diff control              109123   4.66    0.63   7.4x    5.5x    0.000%
    HTA trace_filter sampled rank-0       4855   1.20    0.38   3.2x    3.1x    0.000%
    HTA trace_filter sampled rank-1       4720   1.60    0.45   3.6x    3.1x    0.000%
    HTA triton_example                      71   1.40    0.44   3.1x    2.9x    0.000%
    tb_plugin resnet50 worker 0          73639   3.96    0.48   8.2x    5.4x    0.000%
    tb_plugin resnet50 worker 4          67781   5.91    0.82   7.3x    5.1x    0.000%
    trace_filter_pair (2 ranks)           9575   2.31    0.59   3.9x    8.0x    0.000%
    ==================================  ======  =====  ======  =====  ======  ========

  HTA crashes on the two traces without GPU kernels (its temporal breakdown indexes the first
  merged kernel: IndexError); fmdiag reports them as CPU-only. Every trace HTA reads agrees to
  0.000% (kernel time, idle, compute, non-compute, overlap and every idle-breakdown row).

The ratio grows with events per rank: HTA's time grows faster than linearly in them, while
fmdiag's is a fixed ~0.25 s (interpreter ~30 ms, numpy ~80 ms, click ~20 ms, msgspec ~10 ms, its
own modules ~25 ms, the kernel-class table ~15 ms, numpy.ma pulled in by ``np.unique`` ~10 ms,
the first run's one-time work; ``benchmarks/cli_startup.py``) plus ~2 µs an event. So small
traces stay at 3-6x (start-up is most of fmdiag's time), single ranks of 70-110k events reach
5-10x, and 8 ranks of 56k events 11x.

What differs and why, beyond these numbers: HTA reads a file's rank with a regex needing
``"rank": N`` with a space (compact JSON makes every file rank 0; the tb_plugin samples have no
rank: both tools read each as rank 0); the rules HTA applies and fmdiag copies — rounding,
``args.stream`` as the only stream, events with a stream counted as kernels, the last-step cut at
the GPU-side ``ProfilerStep`` marker, negative intervals kept — are listed in
``fmdiag.analyzers.frames.hta_compat``'s docstring with what is not reproduced.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HTA_VERSION = "0.6.1"
#: HTA's virtual environment: pandas 3 makes HTA 0.6.1 crash at load (an int16 overflow; see the
#: module docstring); numpy 2 and the rest of its requirements are fine as pip resolves them.
HTA_REQUIREMENTS = (f"traceinsight=={HTA_VERSION}", "pandas>=2,<3")
ROOT = Path(__file__).resolve().parents[1]
#: Relative differences above this are flagged: the target agreement.
TOLERANCE = 0.005
TRACE_SUFFIXES = (".json", ".json.gz")
HTA_SCRIPT = r"""
import json, logging, sys, traceback, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
call = "import hta"
try:
    from hta.trace_analysis import TraceAnalysis
    call = "TraceAnalysis(trace_dir=...)"
    a = TraceAnalysis(trace_dir=sys.argv[1])
    call = "get_temporal_breakdown"
    tb = a.get_temporal_breakdown(visualize=False)
    call = "get_comm_comp_overlap"
    ov = a.get_comm_comp_overlap(visualize=False)
    call = "get_idle_time_breakdown"
    idle, _ = a.get_idle_time_breakdown(ranks=a.t.get_ranks(), visualize=False)
except Exception as exc:
    traceback.print_exc()
    sys.exit(f"{call}: {type(exc).__name__}: {exc}")
json.dump({"temporal": tb.to_dict("records"), "overlap": ov.to_dict("records"),
           "idle": idle.to_dict("records")}, sys.stdout, default=float)
"""


class CommandError(RuntimeError):
    """A measured command exited non-zero; ``last_line`` is the last line of its stderr."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str) -> None:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        self.last_line = lines[-1].strip() if lines else f"exit status {returncode}, no message"
        #: A Python traceback, not a message the program chose to print.
        self.crashed = "Traceback (most recent call last)" in stderr
        super().__init__(f"{' '.join(cmd[:3])} failed ({returncode}):\n{stderr[-3000:]}")


def run_measured(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, float, str]:
    """Wall seconds, largest-process and whole-tree peak RSS (MiB), stdout of ``cmd``."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the process ends
    err = tempfile.TemporaryFile()  # noqa: SIM115
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, env=env)
    top = psutil.Process(proc.pid)
    peak_one = peak_all = 0
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
            rss = []
            for p in procs:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            peak_one = max(peak_one, max(rss, default=0))
            peak_all = max(peak_all, sum(rss))
        except psutil.Error:
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    out.seek(0)
    err.seek(0)
    text = out.read().decode()
    err_text = err.read().decode(errors="replace")
    out.close()
    err.close()
    if proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, err_text)
    return wall, peak_one / 2**20, peak_all / 2**20, text


def hta_python(args: argparse.Namespace, work: Path) -> str:
    if args.hta_python:
        return str(args.hta_python)
    venv = work / "hta-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *HTA_REQUIREMENTS], check=True)
    return str(py)


def make_traces(args: argparse.Namespace, work: Path) -> Path:
    if args.traces:
        return Path(args.traces)
    if args.source == "builder":
        sys.path.insert(0, str(ROOT / "tests"))
        from analyze import kineto_builder as kb

        out = work / "builder" / "kineto"
        for rank in range(args.ranks):
            kb.write(
                out / f"rank{rank}.json.gz", kb.build(kb.Options(rank=rank, steps=args.steps, layers=40))
            )
        return out
    sim = work / "sim"
    nodes = max(1, args.ranks // 4)
    cmd = [
        sys.executable,
        "-m",
        "fmdiag",
        "simulate",
        "--scenario",
        "network-node",
        "--nodes",
        str(nodes),
        "--gpus",
        "4",
        "--efa-devices",
        "4",
        "--steps",
        str(args.steps),
        "--kineto",
        "all",
        "--kineto-gzip",
        "--out",
        str(sim),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return sim / "kineto"


def decompressed_mb(files: list[Path]) -> float:
    total = 0
    for p in files:
        if p.name.endswith(".gz"):
            with gzip.open(p) as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
        else:
            total += p.stat().st_size
    return total / 1e6


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def rel(a: Any, b: Any) -> float:
    """Relative difference; 0 when both are missing (HTA's NaN, fmdiag's null), 1 when one is."""
    if _missing(a) or _missing(b):
        return 0.0 if _missing(a) and _missing(b) else 1.0
    if a == b:
        return 0.0
    return float(abs(a - b) / max(abs(a), abs(b)))


@dataclass
class Row:
    rank: int
    metric: str
    hta: Any
    fmdiag: Any

    @property
    def diff(self) -> float:
        return rel(self.hta, self.fmdiag)


def comparison_rows(hta: dict[str, Any], fm: dict[str, Any]) -> list[Row]:
    """HTA's numbers and fmdiag's, one row per (rank, metric); a rank or idle row only one side
    has is compared with a missing value (relative difference 1)."""
    mine = {r["rank"]: r for r in fm["hta"] or []}
    overlap = {o["rank"]: o["comp_comm_overlap_pctg"] for o in hta["overlap"]}
    idle_h: dict[int, dict[tuple[int, str], float]] = {}
    for i in hta["idle"]:
        idle_h.setdefault(int(i["rank"]), {})[(int(i["stream"]), i["idle_category"])] = i["idle_time"]
    rows = []
    temporal = [
        ("kernel_time", "kernel_time(us)", "kernel_time_us"),
        ("idle", "idle_time(us)", "idle_time_us"),
        ("compute", "compute_time(us)", "compute_time_us"),
        ("non_compute", "non_compute_time(us)", "non_compute_time_us"),
    ]
    hta_ranks = {int(t["rank"]) for t in hta["temporal"]}
    for t in hta["temporal"]:
        rank = int(t["rank"])
        r = mine.get(rank)
        m = r["temporal"] if r else {}
        rows += [Row(rank, name, t[h], m.get(f)) for name, h, f in temporal]
        rows.append(
            Row(rank, "comm/comp overlap %", overlap.get(rank), r["comm_comp_overlap_pctg"] if r else None)
        )
        idle_m = {(i["stream"], i["idle_category"]): i["idle_time_us"] for i in (r["idle"] if r else [])}
        for key in sorted(set(idle_h.get(rank, {})) | set(idle_m)):
            h_value = idle_h.get(rank, {}).get(key)
            m_value = idle_m.get(key)
            rows.append(Row(rank, f"idle s{key[0]} {key[1]}", h_value, m_value))
    rows += [Row(rank, "(rank fmdiag alone)", None, 0.0) for rank in sorted(set(mine) - hta_ranks)]
    return rows


def _fmt(v: Any) -> str:
    if _missing(v):
        return "-"
    return f"{v:.2f}" if isinstance(v, float) and not v.is_integer() else f"{v:.0f}"


def print_rows(rows: list[Row], indent: str = "  ") -> float:
    """Both sets of numbers side by side with their relative difference; returns the largest."""
    print(f"{indent}{'rank':>4}  {'metric':<26} {'HTA':>14} {'fmdiag':>14} {'rel diff':>9}")
    for row in rows:
        flag = f"  > {100 * TOLERANCE:g}%" if row.diff > TOLERANCE else ""
        print(
            f"{indent}{row.rank:>4}  {row.metric:<26} {_fmt(row.hta):>14} {_fmt(row.fmdiag):>14}"
            f" {100 * row.diff:8.3f}%{flag}"
        )
    return max((r.diff for r in rows), default=0.0)


@dataclass
class Runs:
    """Each side's (wall s, largest MiB, all MiB) per run, its last output, or why it failed."""

    measured: dict[str, list[tuple[float, float, float]]] = field(
        default_factory=lambda: {"hta": [], "fmdiag": []}
    )
    output: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def median(self, side: str) -> tuple[float, float, float]:
        r = self.measured[side]
        return (
            statistics.median(x[0] for x in r),
            statistics.median(x[1] for x in r),
            statistics.median(x[2] for x in r),
        )


@dataclass
class Side:
    name: str
    cmd: list[str]
    env: dict[str, str] | None = None


def measure(sides: list[Side], runs: int, cwd: Path, verbose: bool) -> Runs:
    """One unmeasured run of each side (page cache, fmdiag's bytecode cache), then the sides
    alternately ``runs`` times; a side that fails is not run again."""
    result = Runs()
    for i in range(-1, runs):
        for side in sides:
            if side.name in result.failed:
                continue
            try:
                wall, one, allp, text = run_measured(side.cmd, cwd, side.env)
            except CommandError as exc:
                what = "crashed" if exc.crashed or side.name == "hta" else "refused"
                result.failed[side.name] = f"{what}: {exc.last_line}"
                continue
            result.output[side.name] = text
            if i < 0:
                continue
            result.measured[side.name].append((wall, one, allp))
            if verbose:
                print(
                    f"run {i + 1} {side.name:>6}: {wall:6.2f} s, largest process {one:6.0f} MiB,"
                    f" all processes {allp:6.0f} MiB"
                )
    return result


def fmdiag_cmd(dump: Path) -> list[str]:
    return [sys.executable, "-m", "fmdiag", "analyze", str(dump), "--hta-compatible", "--json"]


def fmdiag_env(work: Path) -> dict[str, str]:
    """fmdiag's environment: a bytecode cache, as an installed fmdiag has (pip compiles it, as it
    did HTA's). A checkout run under ``PYTHONDONTWRITEBYTECODE=1`` would compile every module of
    fmdiag on every run (~0.1 s here), which says nothing about the analysis."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def single(args: argparse.Namespace, work: Path) -> None:
    """One folder of traces (made or given), every number of every rank compared."""
    traces = make_traces(args, work).resolve()
    dump = work / "dump"
    dump.mkdir(exist_ok=True)
    if (dump / "kineto").is_symlink():
        (dump / "kineto").unlink()
    (dump / "kineto").symlink_to(traces, target_is_directory=True)
    files = sorted(traces.iterdir())
    print(f"traces: {traces} ({len(files)} files, {decompressed_mb(files):.1f} MB decompressed)")
    py = hta_python(args, work)
    cwd = Path(tempfile.mkdtemp())  # neither side may import the checkout by accident
    sides = [
        Side("hta", [py, "-c", HTA_SCRIPT, str(traces)]),
        Side("fmdiag", fmdiag_cmd(dump), fmdiag_env(work)),
    ]
    runs = measure(sides, args.runs, cwd, True)
    if "fmdiag" in runs.failed:
        raise SystemExit(f"fmdiag {runs.failed['fmdiag']}")
    if "hta" in runs.failed:
        last = runs.failed["hta"]
        print(f"HTA on these traces: {last}")
        if "int16" in last:
            print(
                "  (HTA downcasts correlation ids to int16 when all are below 32768, then cannot"
                " store event indices above 32767 in that column under pandas 3: its venv needs"
                " pandas<3)"
            )
        f = runs.median("fmdiag")
        print(
            f"\nfmdiag alone, median of {args.runs}: {f[0]:.2f} s, largest {f[1]:.0f} MiB, all {f[2]:.0f} MiB"
        )
        return
    h, f = runs.median("hta"), runs.median("fmdiag")
    print(f"\nmedian of {args.runs} runs ({os.cpu_count()} CPUs):")
    print(f"  {'':8} {'wall s':>8} {'largest MiB':>12} {'all MiB':>8}")
    print(f"  {'HTA':8} {h[0]:8.2f} {h[1]:12.0f} {h[2]:8.0f}")
    print(f"  {'fmdiag':8} {f[0]:8.2f} {f[1]:12.0f} {f[2]:8.0f}")
    print(
        f"  ratios HTA/fmdiag: wall {h[0] / f[0]:.1f}x, largest process {h[1] / f[1]:.1f}x,"
        f" all processes {h[2] / f[2]:.1f}x (targets: >= 10x faster, <= 1/4 of the memory)"
    )
    print("\nper rank: HTA | fmdiag --hta-compatible (µs; overlap %)")
    worst = print_rows(comparison_rows(json.loads(runs.output["hta"]), json.loads(runs.output["fmdiag"])))
    print(
        f"\nlargest relative difference between HTA and --hta-compatible: {100 * worst:.3f}%"
        f" (target <= {100 * TOLERANCE:g}%)"
    )


def real_cases(root: Path) -> list[tuple[str, list[Path]]]:
    """Each trace file of ``root`` is a case; each sub-folder holding traces is one multi-rank case."""
    cases = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(TRACE_SUFFIXES))
            if files:
                cases.append((p.name, files))
        elif p.is_file() and p.name.endswith(TRACE_SUFFIXES):
            cases.append((p.name, [p]))
    return cases


@dataclass
class CaseResult:
    name: str
    files: int
    ranks: int | None = None
    events: int | None = None
    hta_s: float | None = None
    fm_s: float | None = None
    mem_ratio: float | None = None
    worst: float | None = None
    note: str = ""


def real(args: argparse.Namespace, work: Path) -> None:
    """Every case of ``--real DIR`` on its own: timings, memory and every number side by side."""
    cases = real_cases(args.real)
    if not cases:
        raise SystemExit(f"{args.real}: no trace files ({', '.join(TRACE_SUFFIXES)}) or folders of them")
    py = hta_python(args, work)
    cwd = Path(tempfile.mkdtemp())  # neither side may import the checkout by accident
    results = []
    for name, files in cases:
        dump = work / "real" / re.sub(r"[^\w.-]", "_", name)
        shutil.rmtree(dump, ignore_errors=True)
        (dump / "kineto").mkdir(parents=True)
        for f in files:
            shutil.copy(f, dump / "kineto" / f.name)
        print(f"\n== {name}: {len(files)} file(s), {decompressed_mb(files):.1f} MB decompressed")
        sides = [
            Side("hta", [py, "-c", HTA_SCRIPT, str(dump / "kineto")]),
            Side("fmdiag", fmdiag_cmd(dump), fmdiag_env(work)),
        ]
        runs = measure(sides, args.runs, cwd, False)
        res = CaseResult(name, len(files))
        results.append(res)
        fm = json.loads(runs.output["fmdiag"]) if "fmdiag" in runs.output else None
        if fm is not None:
            counts = fm["coverage"]["kineto"]["events"]
            res.events = sum(int(c["events"]) for c in counts.values())
            res.ranks = len(counts)
        if runs.measured["fmdiag"]:
            res.fm_s = runs.median("fmdiag")[0]
        notes = []
        if "hta" in runs.failed:
            notes.append(f"HTA {runs.failed['hta']}")
        if "fmdiag" in runs.failed:
            notes.append(f"fmdiag {runs.failed['fmdiag']}")
        if runs.measured["hta"]:
            res.hta_s = runs.median("hta")[0]
        for note in notes:
            print(f"  {note}")
        res.note = "; ".join(notes)
        line = [f"events {res.events if res.events is not None else '-'} in {res.ranks or '-'} rank(s)"]
        for side, label in (("hta", "HTA"), ("fmdiag", "fmdiag")):
            if runs.measured[side]:
                s = runs.median(side)
                line.append(f"{label} {s[0]:.2f} s, {s[1]:.0f} MiB largest, {s[2]:.0f} MiB all")
        if runs.measured["hta"] and runs.measured["fmdiag"]:
            h, f = runs.median("hta"), runs.median("fmdiag")
            res.mem_ratio = h[2] / f[2]
            line.append(f"ratio {h[0] / f[0]:.1f}x faster, {res.mem_ratio:.1f}x less memory")
        print("  " + "; ".join(line) + f" (median of {args.runs}, {os.cpu_count()} CPUs)")
        if "hta" in runs.output and fm is not None:
            res.worst = print_rows(comparison_rows(json.loads(runs.output["hta"]), fm), "    ")
            if res.worst > TOLERANCE:
                res.note = (res.note + "; " if res.note else "") + "differs"
    print(
        f"\nsummary ({os.cpu_count()} CPUs, median of {args.runs} runs each;"
        " max diff: the largest relative difference)"
    )
    print(
        f"{'case':<44} {'ranks':>5} {'events':>7} {'HTA s':>6} {'fmdiag s':>8} {'ratio':>6} {'mem':>5}"
        f" {'max diff':>9}  note"
    )
    for r in results:
        ratio = f"{r.hta_s / r.fm_s:.1f}x" if r.hta_s and r.fm_s else "-"
        print(
            f"{r.name[:44]:<44} {r.ranks or '-':>5} {r.events if r.events is not None else '-':>7}"
            f" {f'{r.hta_s:.2f}' if r.hta_s else '-':>6} {f'{r.fm_s:.2f}' if r.fm_s else '-':>8} {ratio:>6}"
            f" {f'{r.mem_ratio:.1f}x' if r.mem_ratio else '-':>5}"
            f" {f'{100 * r.worst:.3f}%' if r.worst is not None else '-':>9}  {r.note}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", type=Path, help="a folder of Kineto traces (default: make them)")
    ap.add_argument(
        "--real",
        type=Path,
        metavar="DIR",
        help="each trace file of DIR is a case of its own, each sub-folder of traces one multi-rank case",
    )
    ap.add_argument("--source", choices=("simulator", "builder"), default="simulator")
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30, help="steps per trace when making them")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hta-python", type=Path, help="an interpreter with traceinsight installed")
    ap.add_argument("--workdir", type=Path, help="where venv and traces go (default: a temporary folder)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="analyze-vs-hta-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.real:
        real(args, work)
    else:
        single(args, work)


if __name__ == "__main__":
    main()
