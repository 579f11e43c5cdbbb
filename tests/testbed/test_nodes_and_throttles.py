"""The test bed's nodes and throttles, for real: namespaces on a bridge, tbf qdiscs, cgroups.

Each test makes what it checks and removes it; the last checks are that nothing is left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fmdiag.testbed import cgroups, fabric, preflight, shaping

pytestmark = pytest.mark.integration

if os.geteuid() != 0:  # the one place a missing privilege is named, not hidden
    pytest.fail("the test bed's tests run as root (CI and this project's machines do)", pytrace=False)

ECHO = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 12999)); s.listen(1); print("listening", flush=True)
    c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()
    """
)
CALL = textwrap.dedent(
    """
    import socket, sys
    c = socket.create_connection((sys.argv[1], 12999), timeout=10); c.sendall(b"hello")
    print(c.recv(100).decode())
    """
)


def test_preflight_passes_here() -> None:
    assert preflight.problem() is None


def test_nodes_talk_over_the_bridge_and_leave_nothing_behind() -> None:
    fab = fabric.Fabric()
    try:
        a, b = fab.up(["node-000", "node-001"])
        assert a.address.startswith("198.18.") and b.address.startswith("198.18.")
        server = subprocess.Popen(
            [*b.exec_prefix(), sys.executable, "-c", ECHO, b.address], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        reply = subprocess.run(
            [*a.exec_prefix(), sys.executable, "-c", CALL, b.address],
            capture_output=True,
            text=True,
            timeout=30,
        )
        server.wait(10)
        assert reply.stdout.strip() == "HELLO", reply.stderr
        # the host name resolves to the node's own address inside its namespace (what gloo needs)
        hosts = subprocess.run(
            [*a.exec_prefix(), "getent", "hosts", os.uname().nodename], capture_output=True, text=True
        ).stdout
        assert hosts.split()[0] == a.address
        shaping.limit(a, 40)
        assert shaping.shaped(a) and not shaping.shaped(b)
        shaping.unlimit(a)
        assert not shaping.shaped(a)
    finally:
        assert fab.close() == []
    assert fabric.leftovers(include_live=True) == []


def test_a_killed_runs_namespaces_are_removed_by_the_next_run(tmp_path: Path) -> None:
    code = (
        "from fmdiag.testbed import fabric; f = fabric.Fabric(); f.up(['node-000']); print(f.tag, flush=True)"
    )
    owner = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tag = owner.stdout.strip()  # the owner exited without closing: as if SIGKILLed
    stale = fabric.leftovers()
    assert stale and all(tag in name for _, name in stale)
    removed = fabric.remove_stale()
    assert len(removed) == len(stale)
    assert fabric.leftovers(include_live=True) == []


def test_cpu_quota_and_disk_groups_are_made_joined_and_removed(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cpu = cgroups.cpu_quota("t-cpu", 0.25, [sleeper.pid])
        assert (cpu.path / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert str(sleeper.pid) in (cpu.path / "cgroup.procs").read_text().split()
        disk = cgroups.disk_of(tmp_path)
        io = cgroups.disk_bandwidth("t-io", disk, [sleeper.pid], read_bps=1_000_000)
        assert f"{disk} 1000000" in (io.path / "blkio.throttle.read_bps_device").read_text()
        assert cpu.remove() and io.remove()
        assert not cpu.path.exists() and not io.path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cgroups.leftovers(include_live=True) == []


def test_a_path_off_any_disk_is_refused_by_name() -> None:
    with pytest.raises(cgroups.CgroupError, match="/proc"):
        cgroups.disk_of(Path("/proc"))
