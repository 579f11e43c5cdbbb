"""The host collector on the hand-written procfs tree, with faults injected into a copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fmdiag.exporters.collectors import host

from .conftest import FIXTURES, make, one, pick, pids, scrape

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
BTIME = 1764000000


def test_cpu_seconds_pressure_and_cpus_from_the_fixture() -> None:
    s = scrape(make(FIXTURES / "proc"))
    expected = {
        "user": 8640000,
        "nice": 1200,
        "system": 1296000,
        "idle": 34560000,
        "iowait": 172800,
        "irq": 0,
        "softirq": 43200,
        "steal": 900,
    }
    for mode, ticks in expected.items():
        assert one(s, "fmdiag_host_cpu_seconds_total", mode=mode) == pytest.approx(ticks / TICK)
    assert one(s, "fmdiag_host_cpus") == 4
    psi = {
        ("cpu", "some"): 86400.0,
        ("cpu", "full"): 0.0,
        ("memory", "some"): 3600.0,
        ("memory", "full"): 1200.0,
        ("io", "some"): 43200.0,
        ("io", "full"): 21600.0,
    }
    for (resource, kind), seconds in psi.items():
        assert one(s, "fmdiag_host_pressure_stall_seconds_total", resource=resource, kind=kind) == seconds


def test_default_pattern_finds_the_launcher_the_rank_and_its_dataloader_worker() -> None:
    collector = make(FIXTURES / "proc")
    s = scrape(collector)
    # 4200 torchrun, 4242 the rank, 4250 its data-loader worker; not sshd (812), not kthreadd (2).
    assert pids(s) == {4200, 4242, 4250}
    assert one(s, "fmdiag_host_training_processes") == 3
    rank = {"pid": "4242", "name": "pt_main_thread", "gpu": ""}
    assert one(s, "fmdiag_process_cpu_seconds_total", mode="user", **rank) == pytest.approx(360000 / TICK)
    assert one(s, "fmdiag_process_cpu_seconds_total", mode="system", **rank) == pytest.approx(45000 / TICK)
    assert one(s, "fmdiag_process_cpu_seconds_total", mode="iowait", **rank) == pytest.approx(1200 / TICK)
    assert one(s, "fmdiag_process_resident_memory_bytes", **rank) == 2500000 * PAGE
    assert one(s, "fmdiag_process_read_bytes_total", **rank) == 987654321000
    assert one(s, "fmdiag_process_write_bytes_total", **rank) == 123456789000
    assert one(s, "fmdiag_process_threads", **rank) == 96
    assert one(s, "fmdiag_process_start_time_seconds", **rank) == pytest.approx(BTIME + 500000 / TICK)
    assert one(s, "fmdiag_process_threads", pid="4200", name="torchrun") == 12
    assert collector.ctx.errors.count("host") == 0


def test_custom_pattern_and_empty_pattern() -> None:
    s = scrape(make(FIXTURES / "proc", **{"process-pattern": r"sshd"}))
    assert pids(s) == {812}
    s = scrape(make(FIXTURES / "proc", **{"process-pattern": ""}))
    assert pids(s) == set()
    assert one(s, "fmdiag_host_training_processes") == 0
    # Node-level metrics do not depend on finding processes.
    assert one(s, "fmdiag_host_cpus") == 4


def test_invalid_options_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="process-pattern"):
        make(FIXTURES / "proc", **{"process-pattern": "python(("})
    with pytest.raises(ValueError, match="max-processes"):
        make(FIXTURES / "proc", **{"max-processes": "many"})
    with pytest.raises(ValueError, match="max-processes"):
        make(FIXTURES / "proc", **{"max-processes": "-1"})


def test_process_series_are_bounded_and_the_rest_counted() -> None:
    s = scrape(make(FIXTURES / "proc", **{"max-processes": "2"}))
    assert pids(s) == {4200, 4242}
    assert one(s, "fmdiag_host_training_processes") == 3
    s = scrape(make(FIXTURES / "proc", **{"max-processes": "0"}))
    assert pids(s) == set()
    assert one(s, "fmdiag_host_training_processes") == 3


def test_gpu_users_come_first_and_carry_their_gpu() -> None:
    gpu_users = {4250: "3", 812: "0,1", 999999: "7"}
    s = scrape(make(FIXTURES / "proc", lambda: gpu_users, **{"max-processes": "3"}))
    # GPU users first (999999 has exited: left out without an error), then pattern matches.
    assert pids(s) == {812, 4250, 4200}
    assert one(s, "fmdiag_process_threads", pid="812") == 1
    assert pick(s, "fmdiag_process_threads", pid="812", gpu="0,1")
    assert pick(s, "fmdiag_process_threads", pid="4250", gpu="3")
    assert pick(s, "fmdiag_process_threads", pid="4200", gpu="")
    assert one(s, "fmdiag_host_training_processes") == 5


def test_gpu_users_only_with_an_empty_pattern() -> None:
    s = scrape(make(FIXTURES / "proc", lambda: {4242: "0"}, **{"process-pattern": ""}))
    assert pids(s) == {4242}


def test_a_failing_gpu_provider_is_reported_and_the_pattern_still_works() -> None:
    def broken() -> dict[int, str]:
        raise RuntimeError("NVML went away")

    collector = make(FIXTURES / "proc", broken)
    s = scrape(collector)
    assert pids(s) == {4200, 4242, 4250}
    assert collector.ctx.errors.count("host") == 1


def test_garbled_proc_stat_costs_only_the_cpu_metrics(proc_tree: Path) -> None:
    (proc_tree / "stat").write_text("cpu  12 x\nbtime 1764000000\n")
    collector = make(proc_tree)
    s = scrape(collector)
    assert not pick(s, "fmdiag_host_cpu_seconds_total")
    assert one(s, "fmdiag_host_pressure_stall_seconds_total", resource="io", kind="full") == 21600.0
    assert pids(s) == {4200, 4242, 4250}
    assert collector.ctx.errors.count("host") == 1


def test_kernel_without_psi_has_no_pressure_series_and_no_error(proc_tree: Path) -> None:
    shutil.rmtree(proc_tree / "pressure")
    collector = make(proc_tree)
    s = scrape(collector)
    assert not pick(s, "fmdiag_host_pressure_stall_seconds_total")
    assert one(s, "fmdiag_host_cpus") == 4
    assert collector.ctx.errors.count("host") == 0


def test_one_garbled_pressure_file_costs_only_that_resource(proc_tree: Path) -> None:
    (proc_tree / "pressure" / "io").write_text("some avg10=0.00 total=oops\n")
    (proc_tree / "pressure" / "memory").write_bytes(b"")
    collector = make(proc_tree)
    s = scrape(collector)
    assert not pick(s, "fmdiag_host_pressure_stall_seconds_total", resource="io")
    assert not pick(s, "fmdiag_host_pressure_stall_seconds_total", resource="memory")
    assert one(s, "fmdiag_host_pressure_stall_seconds_total", resource="cpu", kind="some") == 86400.0
    assert collector.ctx.errors.count("host") == 1


def test_a_process_with_missing_or_garbled_files_is_left_out_and_reported(proc_tree: Path) -> None:
    (proc_tree / "4250" / "statm").unlink()
    (proc_tree / "4200" / "stat").write_text("4200 (torchrun) S garbage\n")
    collector = make(proc_tree)
    s = scrape(collector)
    assert pids(s) == {4242}
    assert one(s, "fmdiag_host_training_processes") == 3
    assert collector.ctx.errors.count("host") == 2


def test_a_process_that_exited_is_skipped_silently(proc_tree: Path) -> None:
    shutil.rmtree(proc_tree / "4242")
    collector = make(proc_tree, lambda: {4242: "0"})
    s = scrape(collector)
    assert pids(s) == {4200, 4250}
    assert collector.ctx.errors.count("host") == 0


def test_missing_procfs_root_reports_and_never_raises(tmp_path: Path) -> None:
    collector = make(tmp_path / "nowhere")
    s = scrape(collector)
    assert one(s, "fmdiag_host_training_processes") == 0
    assert not pick(s, "fmdiag_host_cpu_seconds_total")
    assert collector.ctx.errors.count("host") == 1  # the unlistable process directory


def test_unreadable_io_counters_drop_only_the_byte_counters(proc_tree: Path, tmp_path: Path) -> None:
    """Another user's /proc/<pid>/io needs ptrace rights: the rest of the process stays."""
    for pid in ("4200", "4242", "4250"):
        (proc_tree / pid / "io").chmod(0o600)
    script = (
        "import sys; from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from conftest import make, scrape, pick, pids\n"
        "c = make(Path(sys.argv[1]))\n"
        "for _ in range(2): s = scrape(c)\n"
        "n = len(pick(s, 'fmdiag_process_read_bytes_total'))\n"
        "print(sorted(pids(s)), n, c.ctx.errors.count('host'))\n"
    )
    for pid in ("4200", "4242", "4250"):
        (proc_tree / pid / "io").chmod(0o000)
    cmd = [sys.executable, "-c", script, str(proc_tree), str(Path(__file__).parent)]
    if os.geteuid() == 0:
        # Root reads any file through CAP_DAC_OVERRIDE: drop it (and DAC_READ_SEARCH) the way
        # the DaemonSet's `drop: [ALL]` does, keeping uid 0.
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    # Two scrapes: the three processes are exported without byte counters, and each unreadable
    # file is reported once, not once per scrape.
    assert out.split("\n")[0] == "[4200, 4242, 4250] 0 3"


def test_concurrent_collectors_on_different_procfs_roots_do_not_mix(tmp_path: Path) -> None:
    """psutil's procfs root is a global: the lock must keep each collector on its own tree."""
    fixture = make(FIXTURES / "proc")
    real = make(Path("/proc"), **{"process-pattern": "no-such-process-pattern-x9"})
    errors: list[str] = []

    def run(collector: host.HostCollector, expect: set[int]) -> None:
        for _ in range(15):
            got = pids(scrape(collector))
            if got != expect:
                errors.append(f"{collector.procfs}: {got}")

    threads = [
        threading.Thread(target=run, args=(fixture, {4200, 4242, 4250})),
        threading.Thread(target=run, args=(real, set())),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fixture.ctx.errors.count("host") == 0
