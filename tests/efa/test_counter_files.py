"""Kept device descriptors (KeptDevices): values stay fresh, changes to the tree are seen,
nothing leaks."""

from __future__ import annotations

import gc
import os
import shutil
import time
from pathlib import Path

import pytest

from fmdiag.exporters.collector import CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors.efa import EfaCollector
from fmdiag.exporters.kept_files import KeptDevices

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "efa" / "nitro_v4" / "sys"
PAST_NS = 1_600_000_000 * 10**9


def open_fds() -> int:
    gc.collect()  # what other tests dropped is closed now, not in the middle of the count
    return len(os.listdir("/proc/self/fd"))


def settle(sysfs: Path) -> None:
    """Date every directory in the past, as on a node booted long ago (sysfs never changes)."""
    for dirpath, _dirs, _files in os.walk(sysfs):
        os.utime(dirpath, ns=(PAST_NS, PAST_NS))
    time.sleep(0.06)  # utime itself sets ctime to now; let it age past the 50 ms guard


def scrape(c: EfaCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in c.collect() for s in f.samples}


def tx(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], dev: str = "rdmap79s0") -> float | None:
    return values.get(("fmdiag_efa_tx_bytes_total", (("device", dev), ("port", "1"))))


@pytest.mark.parametrize("watch", [True, False], ids=["inotify", "stat"])
def test_kept_descriptors_read_fresh_values_and_follow_changes(tmp_path: Path, watch: bool) -> None:
    sysfs = tmp_path / "sys"
    shutil.copytree(FIXTURE, sysfs, symlinks=True)
    settle(sysfs)
    errors = ErrorReporter()
    c = EfaCollector(CollectorContext(paths=Paths(sysfs=sysfs), errors=errors))
    c.files.close()
    c.files = KeptDevices(budget=10_000, watch=watch)
    assert c.files.watching is watch  # inotify is there on Linux: both ways are tested
    before = open_fds()
    assert tx(scrape(c)) == 1_001_111
    kept = c.files.open_fds
    # Per EFA: its directory, the 4 under it unless inotify watches them (ports, ports/1 and
    # both hw_counters; device/ is a symlink, checked by path), 8 attributes (vendor, numa_node,
    # fw_ver, node_guid, the port's state, phys_state, rate, link_layer) and its port and device
    # hw_counters files, lifespan included.
    assert kept == 2 * (1 + (0 if c.files.watching else 4) + 8 + 23 + 13)
    assert open_fds() == before + kept + watch  # + the inotify descriptor, made for the first kept device

    counters = sysfs / "class" / "infiniband" / "rdmap79s0" / "ports" / "1" / "hw_counters"
    # Rewritten in place (what sysfs does on every read): the kept descriptor sees it.
    (counters / "tx_bytes").write_text("5\n")
    assert tx(scrape(c)) == 5
    assert c.files.open_fds == kept

    # Replaced by rename, as the simulator writes: the directory changed, files are reopened.
    (tmp_path / "new").write_text("6\n")
    os.replace(tmp_path / "new", counters / "tx_bytes")
    assert tx(scrape(c)) == 6
    assert tx(scrape(c)) == 6

    # Replaced by a directory: counted as an error, the other counters are still there.
    (counters / "tx_bytes").unlink()
    (counters / "tx_bytes").mkdir()
    values = scrape(c)
    assert tx(values) is None
    assert values[("fmdiag_efa_rx_bytes_total", (("device", "rdmap79s0"), ("port", "1")))] == 1_003_333
    assert errors.count("efa") == 1

    # The device goes away: its descriptors are closed at the end of the scrape.
    shutil.rmtree(os.path.realpath(sysfs / "class" / "infiniband" / "rdmap79s0"))
    (sysfs / "class" / "infiniband" / "rdmap79s0").unlink()
    values = scrape(c)
    assert values[("fmdiag_efa_devices", ())] == 1
    assert 0 < c.files.open_fds < kept
    assert open_fds() == before + c.files.open_fds + watch

    c.close()
    assert c.files.open_fds == 0
    assert open_fds() == before  # the inotify descriptor is closed too


def test_no_descriptors_kept_for_a_directory_just_modified(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    shutil.copytree(FIXTURE, sysfs, symlinks=True)  # every directory was just written
    # ... and, so that a loaded machine taking over 50 ms to reach the scrape cannot make them look
    # settled, stamped a minute ahead: modified after the opening, never trusted.
    ahead = time.time_ns() + 60 * 10**9
    for folder, _dirs, _files in os.walk(sysfs):
        os.utime(folder, ns=(ahead, ahead), follow_symlinks=False)
    c = EfaCollector(CollectorContext(paths=Paths(sysfs=sysfs)))
    assert tx(scrape(c)) == 1_001_111
    assert c.files.open_fds == 0
    c.close()


def test_budget_bounds_kept_descriptors(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    shutil.copytree(FIXTURE, sysfs, symlinks=True)
    settle(sysfs)
    c = EfaCollector(CollectorContext(paths=Paths(sysfs=sysfs)))
    c.files.close()
    c.files = KeptDevices(budget=60, watch=False)  # room for one device's 49 descriptors, not two
    before = open_fds()
    for _ in range(3):
        values = scrape(c)
        assert values[("fmdiag_efa_devices", ())] == 2
        assert tx(values) == 1_001_111 and tx(values, "rdmap151s0") == 2_001_111
        assert 0 < c.files.open_fds <= 60
    assert open_fds() == before + c.files.open_fds
    c.close()
    assert open_fds() == before
