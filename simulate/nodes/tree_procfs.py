"""procfs for the host collector, in the forms psutil parses (``PROCFS_PATH=<root>/proc``).

``proc/stat``, ``proc/pressure/*``, ``proc/meminfo``, ``proc/uptime`` and per process
``proc/<pid>/{stat,status,statm,io,cmdline,comm}``. Tick and page counts use this host's
``SC_CLK_TCK`` and page size, which psutil divides by, so seconds and bytes round-trip exactly.
"""

from __future__ import annotations

import math
import os
import resource

from fmdiag.simulate.nodes.readings import HostState, NodeState, ProcessState
from fmdiag.simulate.nodes.tree_history import History
from fmdiag.simulate.nodes.tree_write import Link, TreeWriter

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")
PSI_RESOURCES = ("cpu", "memory", "io")
#: p5.48xlarge memory; /proc/meminfo is written for it (the state carries no memory figures).
DEFAULT_MEM_TOTAL_BYTES = 2048 * (1 << 30)
_PSI_WINDOWS = (10.0, 60.0, 300.0)


def _clk_tck() -> int:
    """USER_HZ as psutil reads it (``SC_CLK_TCK``), so tick counts round-trip exactly."""
    return int(os.sysconf("SC_CLK_TCK"))


def _page_size() -> int:
    return resource.getpagesize()


def format_proc_stat(host: HostState, boot_time_s: int, processes: int) -> str:
    """``/proc/stat``: the all-CPU line, one line per CPU (an even share each), btime."""
    hz = _clk_tck()
    totals = [round(host.cpu_seconds.get(m, 0.0) * hz) for m in CPU_MODES]
    n = max(host.ncpus, 1)
    out = ["cpu  " + " ".join(str(t) for t in totals) + "\n"]
    shares = [divmod(t, n) for t in totals]
    for cpu in range(n):
        vals = [base + (1 if cpu < rem else 0) for base, rem in shares]
        out.append(f"cpu{cpu} " + " ".join(str(v) for v in vals) + "\n")
    out.append("intr 0\n")
    out.append("ctxt 0\n")
    out.append(f"btime {boot_time_s}\n")
    out.append(f"processes {processes}\n")
    out.append("procs_running 1\n")
    out.append("procs_blocked 0\n")
    out.append("softirq 0 0 0 0 0 0 0 0 0 0 0\n")
    return "".join(out)


def _advance_psi(history: History, host: HostState, time_s: float) -> dict[str, str]:
    """``/proc/pressure/<resource>`` texts, with avg10/60/300 decayed like the kernel's."""
    out: dict[str, str] = {}
    for res in PSI_RESOURCES:
        lines = []
        kinds = host.pressure_us.get(res, {})
        prev_res = history.psi.setdefault(res, {})
        for kind in ("some", "full"):
            total = int(kinds.get(kind, 0))
            prev = prev_res.get(kind)
            avgs = [0.0, 0.0, 0.0]
            if prev is not None and time_s > prev[1] and total >= prev[0]:
                dt = time_s - prev[1]
                share = min(100.0, (total - prev[0]) / (dt * 1e6) * 100.0)
                avgs = [
                    old * math.exp(-dt / w) + share * (1 - math.exp(-dt / w))
                    for old, w in zip(prev[2:], _PSI_WINDOWS, strict=True)
                ]
            elif prev is not None and time_s == prev[1] and total == prev[0]:
                avgs = list(prev[2:])
            prev_res[kind] = [float(total), time_s, *avgs]
            a10, a60, a300 = avgs
            lines.append(f"{kind} avg10={a10:.2f} avg60={a60:.2f} avg300={a300:.2f} total={total}\n")
        out[res] = "".join(lines)
    return out


def format_meminfo(host: HostState, mem_total_bytes: int) -> str:
    used = sum(p.rss_bytes for p in host.processes) + 8 * (1 << 30)
    total_kb = mem_total_bytes // 1024
    used_kb = min(used // 1024, total_kb)
    cached_kb = (total_kb - used_kb) // 4
    free_kb = total_kb - used_kb - cached_kb
    rows = [
        ("MemTotal", total_kb),
        ("MemFree", free_kb),
        ("MemAvailable", free_kb + cached_kb),
        ("Buffers", 0),
        ("Cached", cached_kb),
        ("SwapCached", 0),
        ("Active", used_kb),
        ("Inactive", cached_kb),
        ("Shmem", 0),
        ("SReclaimable", 0),
        ("SwapTotal", 0),
        ("SwapFree", 0),
    ]
    return "".join(f"{name + ':':<16}{kb:>8} kB\n" for name, kb in rows)


def format_pid_stat(p: ProcessState, boot_time_s: int) -> str:
    """``/proc/<pid>/stat``: the 52 fields of ``proc_pid_stat`` (psutil reads 14, 15, 22, 42)."""
    hz = _clk_tck()
    comm = p.name[:15]
    start_ticks = max(0, round((p.start_time_s - boot_time_s) * hz))
    rss_pages = p.rss_bytes // _page_size()
    fields: list[int | str] = [0] * 50
    fields[0] = "S"  # state
    fields[1] = 1  # ppid
    fields[2] = p.pid  # pgrp
    fields[3] = p.pid  # session
    fields[6] = 4194304  # flags: PF_RANDOMIZE
    fields[11] = round(p.cpu_user_s * hz)  # utime
    fields[12] = round(p.cpu_system_s * hz)  # stime
    fields[15] = 20  # priority
    fields[17] = p.threads  # num_threads
    fields[19] = start_ticks  # starttime
    fields[20] = p.rss_bytes  # vsize (bytes)
    fields[21] = rss_pages  # rss (pages)
    fields[22] = 18446744073709551615  # rsslim
    fields[35] = 17  # exit_signal
    fields[39] = round(p.cpu_iowait_s * hz)  # delayacct_blkio_ticks
    return f"{p.pid} ({comm}) " + " ".join(str(f) for f in fields) + "\n"


def format_pid_status(p: ProcessState, ncpus: int) -> str:
    rss_kb = p.rss_bytes // 1024
    rows = [
        ("Name", p.name[:15]),
        ("Umask", "0022"),
        ("State", "S (sleeping)"),
        ("Tgid", str(p.pid)),
        ("Ngid", "0"),
        ("Pid", str(p.pid)),
        ("PPid", "1"),
        ("TracerPid", "0"),
        ("Uid", "1000\t1000\t1000\t1000"),
        ("Gid", "1000\t1000\t1000\t1000"),
        ("FDSize", "256"),
        ("Groups", "1000 "),
        ("VmPeak", f"{rss_kb:8d} kB"),
        ("VmSize", f"{rss_kb:8d} kB"),
        ("VmHWM", f"{rss_kb:8d} kB"),
        ("VmRSS", f"{rss_kb:8d} kB"),
        ("Threads", str(p.threads)),
        ("Cpus_allowed_list", f"0-{max(ncpus, 1) - 1}"),
        ("voluntary_ctxt_switches", "0"),
        ("nonvoluntary_ctxt_switches", "0"),
    ]
    return "".join(f"{k}:\t{v}\n" for k, v in rows)


def format_pid_io(p: ProcessState) -> str:
    mib = 1 << 20
    rows = [
        ("rchar", p.read_bytes),
        ("wchar", p.write_bytes),
        ("syscr", -(-p.read_bytes // mib)),
        ("syscw", -(-p.write_bytes // mib)),
        ("read_bytes", p.read_bytes),
        ("write_bytes", p.write_bytes),
        ("cancelled_write_bytes", 0),
    ]
    return "".join(f"{k}: {v}\n" for k, v in rows)


def _process_spec(p: ProcessState, boot_time_s: int, ncpus: int) -> dict[str, str | Link]:
    pages = p.rss_bytes // _page_size()
    return {
        "stat": format_pid_stat(p, boot_time_s),
        "status": format_pid_status(p, ncpus),
        "statm": f"{pages} {pages} 0 0 0 {pages} 0\n",
        "io": format_pid_io(p),
        "cmdline": "".join(arg + "\0" for arg in p.cmdline),
        "comm": p.name[:15] + "\n",
    }


def boot_time(state: NodeState, history: History, given: float | None) -> int:
    """The kernel boot time: ``given``, else the one a previous render chose, else one early
    enough for the CPU time and every process start, so ``btime``/``uptime`` stay consistent.
    """
    if given is not None:
        return math.floor(given)
    if history.boot_time_s is not None:
        return history.boot_time_s
    uptime = sum(state.host.cpu_seconds.values()) / max(state.host.ncpus, 1)
    boot = math.floor(state.time_s - max(uptime, 600.0))
    starts = [p.start_time_s for p in state.host.processes]
    if starts:
        boot = min(boot, math.floor(min(starts)) - 60)
    return boot


def render_procfs(
    tree: TreeWriter, state: NodeState, history: History, boot_time_s: int, mem_total_bytes: int
) -> None:
    """Bring ``proc/`` (and the few ``sys/`` files psutil reads) to ``state``; PSI averages
    decay in ``history``, and exited processes' directories vanish whole.
    """
    proc = tree.root / "proc"
    host = state.host
    pids = [str(p.pid) for p in host.processes]
    if len(set(pids)) != len(pids):
        raise ValueError(f"duplicate process ids in the host state: {pids}")
    tree.prune(proc, pids, only="[0-9]*")
    for p in host.processes:
        tree.sync_dir(proc / str(p.pid), _process_spec(p, boot_time_s, host.ncpus))
    tree.write(proc / "stat", format_proc_stat(host, boot_time_s, len(host.processes)))
    for res, text in _advance_psi(history, host, state.time_s).items():
        tree.write(proc / "pressure" / res, text)
    tree.write(proc / "meminfo", format_meminfo(host, mem_total_bytes))
    idle = host.cpu_seconds.get("idle", 0.0)
    tree.write(proc / "uptime", f"{max(0.0, state.time_s - boot_time_s):.2f} {idle:.2f}\n")
    tree.write(proc / "sys" / "kernel" / "hostname", f"{state.hostname}\n")
    cpus = max(host.ncpus, 1)
    online = "0\n" if cpus == 1 else f"0-{cpus - 1}\n"
    tree.write(tree.root / "sys" / "devices" / "system" / "cpu" / "online", online)
