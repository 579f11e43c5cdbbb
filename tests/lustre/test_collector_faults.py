"""The Lustre collector under faults: garbled, unreadable, vanishing and churning files,
filesystems mounting and unmounting between scrapes, and lctl failing or hanging.

Every case: no exception out of collect(), each bad file counted through the error
reporter, and everything that was good still exported.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmdiag.exporters.collectors import lustre as lustre_mod
from fmdiag.exporters.collectors.lustre import LCTL_ARGS

from .conftest import Key, Node

SB = "ffff9c4e7a5b6800"
LL = f"proj-a-{SB}"
OST0 = f"proj-a-OST0000-osc-{SB}"
OSTA = f"proj-a-OST000a-osc-{SB}"
MDC = f"proj-a-MDT0000-mdc-{SB}"
DEBUG = "sys/kernel/debug/lustre"
PROC = "proc/fs/lustre"  # 2.12-2.14 leave osc rpc_stats here


def k(name: str, **labels: str) -> Key:
    return (name, frozenset(labels.items()))


def names(samples: dict[Key, float], name: str, **labels: str) -> int:
    want = set(labels.items())
    return sum(1 for (n, lab) in samples if n == name and want <= lab)


O0 = {"fs": "proj-a", "ost": "OST0000", "mount_id": SB}
OA = {"fs": "proj-a", "ost": "OST000A", "mount_id": SB}
LLAB = {"fs": "proj-a", "mount_id": SB}


@pytest.fixture
def tree(tmp_path: Path, fixtures: Path) -> Path:
    """A writable copy of the 2.14 node."""
    root = tmp_path / "node"
    shutil.copytree(fixtures / "v2.14", root)
    return root


@pytest.fixture
def node(tree: Path, make_node: Callable[..., Node]) -> Node:
    return make_node(tree)


def test_garbled_lines_cost_only_themselves(tree: Path, node: Node) -> None:
    stats = tree / DEBUG / "osc" / OST0 / "stats"
    text = stats.read_text()
    text = text.replace("ost_write                 800 samples", "ost_write                 8x0 samples")
    stats.write_text(text + "\x00\x01 binary junk \xff\n" + "ost_sync 1 samples [usecs] 1 2\n")
    s = node.scrape()
    assert node.error_count == 1  # one report for the file, naming its first bad line
    assert k("fmdiag_lustre_osc_operations_total", **O0, operation="ost_write") not in s
    assert s[k("fmdiag_lustre_osc_operations_total", **O0, operation="ost_read")] == 3200
    assert s[k("fmdiag_lustre_osc_operation_latency_seconds_total", **O0, operation="ost_read")] == 28.8
    assert s[k("fmdiag_lustre_osc_read_bytes_total", **OA)] == 13421772800


def test_garbled_histogram_row_drops_that_histogram_only(tree: Path, node: Node) -> None:
    rpc = tree / PROC / "osc" / OST0 / "rpc_stats"
    rpc.write_text(rpc.read_text().replace("256:\t\t      2399", "256:\t\t      23?9"))
    s = node.scrape()
    assert node.error_count == 1
    assert names(s, "fmdiag_lustre_osc_pages_per_rpc_bucket", **O0) == 0
    assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **O0, direction="read")] == 3
    assert names(s, "fmdiag_lustre_osc_pages_per_rpc_bucket", **OA, direction="read") == 12


def test_garbled_read_ahead_claims_no_zero(tree: Path, node: Node) -> None:
    ra = tree / DEBUG / "llite" / LL / "read_ahead_stats"
    ra.write_text(
        ra.read_text().replace("hits                      6400000", "hits                      64OOOOO")
    )
    s = node.scrape()
    assert node.error_count == 1
    assert k("fmdiag_lustre_llite_read_ahead_hits_total", **LLAB) not in s  # not a false 0
    assert s[k("fmdiag_lustre_llite_read_ahead_misses_total", **LLAB)] == 1024


@pytest.mark.parametrize("fault", ["directory", "symlink-loop", "too-large", "empty", "fifo"])
def test_unreadable_file_is_reported_and_skipped(tree: Path, node: Node, fault: str) -> None:
    path = tree / DEBUG / "osc" / OST0 / "stats"
    path.unlink()
    if fault == "directory":
        path.mkdir()
    elif fault == "symlink-loop":
        path.symlink_to(path)
    elif fault == "fifo":
        os.mkfifo(path)  # opening it for reading must not wait for a writer
    elif fault == "too-large":
        path.write_bytes(b"x" * (lustre_mod.MAX_FILE_BYTES + 1))
    else:
        path.write_text("")
    s = node.scrape()
    assert node.error_count == 1
    assert names(s, "fmdiag_lustre_osc_operations_total", **O0) == 0
    assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **O0, direction="read")] == 3  # rpc_stats still read
    assert names(s, "fmdiag_lustre_osc_operations_total", **OA) == 5
    assert s[k("fmdiag_lustre_filesystems")] == 1


@pytest.fixture
def hook_reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Callable[[], None]], None]:
    """Run an action on the tree just before the collector reads a given file (once)."""
    actions: dict[str, Callable[[], None]] = {}
    real = lustre_mod._read_text

    def read(path: str) -> str:
        action = actions.pop(path, None)
        if action is not None:
            action()
        return real(path)

    monkeypatch.setattr(lustre_mod, "_read_text", read)

    def add(path: str, action: Callable[[], None]) -> None:
        actions[path] = action

    return add


def test_file_vanishing_mid_scrape(tree: Path, node: Node, hook_reads: Callable[..., None]) -> None:
    path = tree / DEBUG / "osc" / OST0 / "stats"
    hook_reads(str(path), path.unlink)
    s = node.scrape()
    assert node.error_count == 0  # an unmount race, not a parse error
    assert names(s, "fmdiag_lustre_osc_operations_total", **O0) == 0
    assert names(s, "fmdiag_lustre_osc_operations_total", **OA) == 5


def test_file_becoming_a_directory_mid_scrape(
    tree: Path, node: Node, hook_reads: Callable[..., None]
) -> None:
    path = tree / DEBUG / "llite" / LL / "stats"

    def to_dir() -> None:
        path.unlink()
        path.mkdir()

    hook_reads(str(path), to_dir)
    s = node.scrape()
    assert node.error_count == 1
    assert names(s, "fmdiag_lustre_llite_operations_total") == 0
    assert s[k("fmdiag_lustre_llite_read_ahead_hits_total", **LLAB)] == 6400000
    assert s[k("fmdiag_lustre_client_info", **LLAB, layout="debugfs")] == 1


def test_whole_mount_vanishing_mid_scrape(tree: Path, node: Node, hook_reads: Callable[..., None]) -> None:
    """Unmount between the directory listing and the reads: the remaining devices are gone."""
    first = tree / DEBUG / "llite" / LL / "stats"

    def unmount() -> None:
        for kind in ("osc", "mdc"):
            shutil.rmtree(tree / DEBUG / kind)

    hook_reads(str(first), unmount)
    s = node.scrape()
    assert node.error_count == 0
    assert names(s, "fmdiag_lustre_osc_operations_total") == 0
    assert names(s, "fmdiag_lustre_llite_operations_total") == 12  # openclosetime is exported apart


def test_files_churning_during_scrapes(tree: Path, node: Node) -> None:
    """A thread keeps turning files into directories, removing and restoring them while the
    collector scrapes: every scrape returns well-formed families and never raises."""
    victims = [tree / DEBUG / "osc" / OST0 / "stats", tree / PROC / "osc" / OSTA / "rpc_stats",
               tree / DEBUG / "llite" / LL / "read_ahead_stats"]  # fmt: skip
    originals = {p: p.read_bytes() for p in victims}
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            p = victims[i % len(victims)]
            step = (i // len(victims)) % 3
            try:
                if p.is_dir():
                    p.rmdir()
                elif p.exists():
                    p.unlink()
                if step == 0:
                    p.mkdir()
                elif step == 1:
                    p.write_bytes(originals[p][: len(originals[p]) // 2])
            except OSError:
                pass
            i += 1

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    try:
        for _ in range(150):
            s = node.scrape()  # samples_of fails on duplicate series
            assert s[k("fmdiag_lustre_filesystems")] == 1
            assert names(s, "fmdiag_lustre_mdc_operations_total") == 9
    finally:
        stop.set()
        worker.join()


# --- mounts, unmounts and layouts between scrapes ------------------------------------------
def test_mount_and_unmount_between_scrapes(
    tmp_path: Path, fixtures: Path, make_node: Callable[..., Node]
) -> None:
    root = tmp_path / "node"
    root.mkdir()
    node = make_node(root)
    s = node.scrape()
    assert s == {k("fmdiag_lustre_filesystems"): 0}

    shutil.copytree(fixtures / "v2.14", root, dirs_exist_ok=True)  # mount
    s = node.scrape()
    assert s[k("fmdiag_lustre_filesystems")] == 1
    assert names(s, "fmdiag_lustre_osc_operations_total") == 15

    # A second filesystem mounts: the same tree under other instance names.
    for kind, old, new in [("llite", LL, "work-ffff9c4e00001000"),
                           ("osc", OST0, "work-OST0007-osc-ffff9c4e00001000"),
                           ("mdc", MDC, "work-MDT0000-mdc-ffff9c4e00001000")]:  # fmt: skip
        shutil.copytree(root / DEBUG / kind / old, root / DEBUG / kind / new)
    s = node.scrape()
    assert s[k("fmdiag_lustre_filesystems")] == 2
    assert s[k("fmdiag_lustre_client_info", fs="work", mount_id="ffff9c4e00001000", layout="debugfs")] == 1
    assert names(s, "fmdiag_lustre_osc_operations_total", ost="OST0007", fs="work") == 10

    for kind in ("llite", "osc", "mdc"):  # everything unmounts
        shutil.rmtree(root / DEBUG / kind)
    shutil.rmtree(root / "sys" / "fs" / "lustre")
    shutil.rmtree(root / PROC)
    assert node.scrape() == {k("fmdiag_lustre_filesystems"): 0}
    assert node.error_count == 0


def test_layout_changes_between_scrapes(
    tmp_path: Path, fixtures: Path, make_node: Callable[..., Node]
) -> None:
    """A client upgraded from 2.10 to 2.14 under a running exporter: proc, then debugfs."""
    root = tmp_path / "node"
    shutil.copytree(fixtures / "v2.10", root)
    node = make_node(root)
    assert (
        node.scrape()[
            k("fmdiag_lustre_client_info", fs="scratch", mount_id="ffff8810c2a3d000", layout="proc")
        ]
        == 1
    )
    shutil.rmtree(root / "proc")
    shutil.copytree(fixtures / "v2.14", root, dirs_exist_ok=True)
    s = node.scrape()
    assert s[k("fmdiag_lustre_client_info", **LLAB, layout="debugfs")] == 1
    assert names(s, "fmdiag_lustre_client_info") == 1
    assert node.error_count == 0


def test_mount_seen_only_in_sysfs_is_shown_and_reported(tree: Path, make_node: Callable[..., Node]) -> None:
    """2.12+ without a readable debugfs: the mount is not silently invisible."""
    shutil.rmtree(tree / "sys" / "kernel")
    node = make_node(tree)
    s = node.scrape()
    assert s[k("fmdiag_lustre_filesystems")] == 1
    assert s[k("fmdiag_lustre_client_info", **LLAB, layout="sysfs")] == 1
    assert node.error_count == 1
    assert names(s, "fmdiag_lustre_osc_operations_total") == 0
    proc_only = make_node(tree, source="proc").scrape()  # the 2.10 layout: sysfs is not looked at
    assert proc_only[k("fmdiag_lustre_filesystems")] == 0
    assert names(proc_only, "fmdiag_lustre_client_info") == 0


def test_rpc_stats_found_in_proc_or_debugfs(
    tmp_path: Path, fixtures: Path, make_node: Callable[..., Node]
) -> None:
    """2.12-2.14 leave osc rpc_stats in /proc (the fixture), other builds put it in debugfs
    next to stats: either way each device is read once, with the same result."""
    root = tmp_path / "node"
    shutil.copytree(fixtures / "v2.14", root)
    before = make_node(root).scrape()
    for ost in (OST0, OSTA):
        (root / PROC / "osc" / ost / "rpc_stats").rename(root / DEBUG / "osc" / ost / "rpc_stats")
    node = make_node(root)
    after = node.scrape()  # samples_of fails on any duplicate series
    assert node.error_count == 0
    assert after == before
    assert after[k("fmdiag_lustre_osc_rpcs_in_flight", **O0, direction="read")] == 3
    assert names(after, "fmdiag_lustre_osc_operations_total", **O0) == 10


def test_without_debugfs_the_proc_leftovers_are_still_read(
    tree: Path, make_node: Callable[..., Node]
) -> None:
    """A 2.14 node whose debugfs the exporter cannot read: rpc_stats (in /proc) still give
    per-OST RPCs in flight and sizes; the mount is shown from sysfs and reported."""
    shutil.rmtree(tree / "sys" / "kernel")
    node = make_node(tree)
    s = node.scrape()
    assert node.error_count == 1
    assert s[k("fmdiag_lustre_client_info", **LLAB, layout="sysfs")] == 1
    assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **O0, direction="read")] == 3
    assert names(s, "fmdiag_lustre_osc_pages_per_rpc_bucket", **OA) == 24


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(victim=st.sampled_from([("osc", OST0, "stats"), ("osc", OST0, "rpc_stats"),
                               ("llite", LL, "stats"), ("llite", LL, "read_ahead_stats"),
                               ("mdc", MDC, "stats")]),
       data=st.binary(max_size=3000))  # fmt: skip
def test_any_bytes_in_any_file_never_break_the_scrape(
    fixtures: Path, make_node: Callable[..., Node], victim: tuple[str, str, str], data: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "node"
        shutil.copytree(fixtures / "v2.14", root)
        kind, inst, param = victim
        (root / (PROC if param == "rpc_stats" else DEBUG) / kind / inst / param).write_bytes(data)
        node = make_node(root)
        s = node.scrape()
        assert s[k("fmdiag_lustre_filesystems")] == 1
        assert names(s, "fmdiag_lustre_osc_operations_total", **OA) == 5  # untouched device intact
        assert node.error_count <= 1


# --- lctl failing, hanging, missing ---------------------------------------------------------------
def _lctl(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "lctl"
    script.write_text(
        f"#!{sys.executable}\nimport os, subprocess, sys, time\n"
        f"if sys.argv[1:] != {list(LCTL_ARGS)!r}:\n"
        "    sys.stderr.write('unexpected arguments %r\\n' % (sys.argv[1:],)); sys.exit(64)\n" + body
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def lctl_node(tmp_path: Path, make_node: Callable[..., Node]) -> Callable[..., Node]:
    def make(body: str, **options: str) -> Node:
        lctl = _lctl(tmp_path, body)
        return make_node(tmp_path / "empty-node", source="lctl", **{"lctl-path": str(lctl), **options})

    return make


def test_lctl_partial_match_is_normal(lctl_node: Callable[..., Node], fixtures: Path) -> None:
    """lctl exits non-zero when a pattern matches nothing (no mdc here): not an error."""
    text = (fixtures / "lctl-2.14.txt").read_text()
    text = text[: text.index("mdc.")]
    node = lctl_node(
        f"sys.stdout.write({text!r})\n"
        "sys.stderr.write(\"error: get_param: param_path 'mdc/*/stats': No such file or directory\\n\")\n"
        "sys.exit(2)\n"
    )
    s = node.scrape()
    assert node.error_count == 0
    assert s[k("fmdiag_lustre_filesystems")] == 1
    assert names(s, "fmdiag_lustre_mdc_operations_total") == 0
    assert names(s, "fmdiag_lustre_osc_operations_total") == 15


def test_lctl_with_nothing_mounted(lctl_node: Callable[..., Node]) -> None:
    node = lctl_node(
        "for p in sys.argv[2:]:\n"
        "    sys.stderr.write(\"error: get_param: param_path '%s': No such file or directory\\n\" % p)\n"
        "sys.exit(2)\n"
    )
    assert node.scrape() == {k("fmdiag_lustre_filesystems"): 0}
    assert node.error_count == 0


def test_lctl_failing_is_reported(lctl_node: Callable[..., Node]) -> None:
    node = lctl_node("sys.stderr.write('error: get_param: Permission denied\\n'); sys.exit(1)\n")
    assert node.scrape() == {}  # the mounts are unknown: no false "0 filesystems"
    assert node.error_count == 1


def test_lctl_failing_after_partial_output_keeps_what_it_printed(
    lctl_node: Callable[..., Node], fixtures: Path
) -> None:
    text = (fixtures / "lctl-2.14.txt").read_text()
    node = lctl_node(
        f"sys.stdout.write({text[: text.index('osc.')]!r})\n"
        "sys.stderr.write('error: get_param: osc/*/stats: Cannot allocate memory\\n'); sys.exit(1)\n"
    )
    s = node.scrape()
    assert node.error_count == 1
    assert s[k("fmdiag_lustre_filesystems")] == 1
    assert s[k("fmdiag_lustre_llite_read_ahead_hits_total", **LLAB)] == 6400000


def test_lctl_missing_is_reported(tmp_path: Path, make_node: Callable[..., Node]) -> None:
    node = make_node(tmp_path, source="lctl", **{"lctl-path": str(tmp_path / "no-such-lctl")})
    assert node.scrape() == {}  # nothing known, not a false "0 filesystems"
    assert node.error_count == 1


def test_lctl_garbage_output_is_counted(lctl_node: Callable[..., Node]) -> None:
    node = lctl_node(
        "sys.stdout.write('\\x00garbage\\nllite.fs-ffff01.stats=\\nopen 3 samples [regs]\\nwhat\\n')\n"
    )
    s = node.scrape()
    assert node.error_count == 2  # the unattributed line, and the bad line in the stats
    assert s[k("fmdiag_lustre_llite_operations_total", fs="fs", mount_id="ffff01", operation="open")] == 3


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_lctl_hanging_is_killed_with_its_children(tmp_path: Path, lctl_node: Callable[..., Node]) -> None:
    pids = tmp_path / "pids"
    node = lctl_node(
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(pids)!r}, 'w').write('%d %d' % (os.getpid(), child.pid))\n"
        "sys.stdout.write('llite.fs-ffff01.stats=\\n'); sys.stdout.flush()\n"
        "time.sleep(300)\n",
        **{"lctl-timeout": "3"},
    )
    s = node.scrape()
    assert s == {}
    assert node.error_count == 1
    assert pids.exists(), "the stand-in lctl was killed before it started its child"
    deadline = time.monotonic() + 10
    alive = [int(p) for p in pids.read_text().split()]
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    assert alive == [], "lctl's process group should have been killed"
