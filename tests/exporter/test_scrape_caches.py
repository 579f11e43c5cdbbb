"""What a scrape keeps from the last one (open sysfs descriptors, label dicts, series texts)
never serves a stale value: after every change to the tree, a long-running exporter's output
is the same, line for line, as a brand-new exporter's reading the same tree; errors are counted
as a fresh read counts them; no descriptor leaks.

Real collectors (EFA, Lustre) and the real scraper and exposition, on copies of the checked-in
fixture trees; the only trick is dating directories in the past, as on a node booted long ago,
so that descriptors are kept at all (a directory modified within 50 ms is never trusted).
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import time
from pathlib import Path
from unittest import mock

import pytest

from fmdiag.exporters.collector import CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors.efa import EfaCollector
from fmdiag.exporters.collectors.lustre import LustreCollector
from fmdiag.exporters.dir_watch import DirWatch
from fmdiag.exporters.exposition import Format, SeriesTexts, render
from fmdiag.exporters.families import Families
from fmdiag.exporters.kept_files import KeptDevices
from fmdiag.exporters.labelsets import LabelSets
from fmdiag.exporters.scrape import Scraper

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PAST_NS = 1_600_000_000 * 10**9
DEV = "rdmap79s0"
OTHER = "rdmap151s0"


def open_fds() -> int:
    gc.collect()  # what other tests dropped is closed now, not in the middle of the count
    return len(os.listdir("/proc/self/fd"))


def settle(root: Path) -> None:
    """Date every directory in the past; utime itself sets ctime to now, so wait past 50 ms."""
    for folder, _dirs, _files in os.walk(root):
        os.utime(folder, ns=(PAST_NS, PAST_NS), follow_symlinks=False)
    time.sleep(0.06)


def node(tmp_path: Path) -> tuple[Path, Paths]:
    root = tmp_path / "node"
    shutil.copytree(FIXTURES / "efa" / "nitro_v4" / "sys", root / "sys", symlinks=True)
    shutil.copytree(FIXTURES / "lustre" / "v2.14", root, symlinks=True, dirs_exist_ok=True)
    paths = Paths(sysfs=root / "sys", procfs=root / "proc", debugfs=root / "sys" / "kernel" / "debug")
    return root, paths


class Exporter:
    """The EFA and Lustre collectors behind one scraper, as the CLI builds them."""

    def __init__(self, paths: Paths, watch: bool = True) -> None:
        self.errors = ErrorReporter()
        ctx = CollectorContext(paths=paths, errors=self.errors)
        self.efa = EfaCollector(ctx)
        if not watch:  # directories checked with stat, as where inotify is not available
            self.efa.files.close()
            self.efa.files = KeptDevices(budget=10_000, watch=False)
        self.scraper = Scraper([self.efa, LustreCollector(ctx)], self.errors, timeout_s=30)

    def text(self) -> str:
        """One scrape in the text format, without the exporter's own figures (timings, RSS)."""
        body = self.scraper.scrape().render(Format.TEXT).decode()
        return "\n".join(line for line in body.splitlines() if "fmdiag_exporter_" not in line)

    def close(self) -> None:
        self.scraper.close()


def fresh(paths: Paths) -> tuple[str, int]:
    """What an exporter started now prints, and the errors it counts on its first scrape."""
    exp = Exporter(paths)
    try:
        return exp.text(), exp.errors.count("efa") + exp.errors.count("lustre")
    finally:
        exp.close()


def value(text: str, series: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return line.rsplit(" ", 1)[1]
    return None


def tx_bytes(device: str) -> str:
    return f'fmdiag_efa_tx_bytes_total{{device="{device}",port="1"}}'


@pytest.mark.parametrize("watch", [True, False], ids=["inotify", "stat"])
def test_a_long_running_exporter_prints_what_a_fresh_one_prints_through_every_change(
    tmp_path: Path, watch: bool
) -> None:
    root, paths = node(tmp_path)
    settle(root)
    baseline_fds = open_fds()
    exp = Exporter(paths, watch)
    assert exp.efa.files.watching is watch
    efa_dir = paths.sysfs / "class" / "infiniband" / DEV
    counters = efa_dir / "ports" / "1" / "hw_counters"
    osc_stats = next((paths.debugfs / "lustre" / "osc").iterdir()) / "stats"

    def check(errors_added: int = 0, pread: object = os.pread) -> str:
        before = exp.errors.count("efa") + exp.errors.count("lustre")
        with mock.patch.object(os, "pread", pread):
            long_running = exp.text()
        expected, expected_errors = fresh(paths)
        assert long_running == expected
        assert exp.errors.count("efa") + exp.errors.count("lustre") - before == expected_errors
        assert expected_errors == errors_added
        return long_running

    try:
        first = check()
        check()  # the second scrape reads through kept descriptors and kept series texts
        assert exp.efa.files.open_fds > 0
        assert value(first, tx_bytes(DEV)) == "1001111"

        # A counter rewritten in place (what a sysfs read shows as the driver counts on):
        # the same file, a new value.
        (counters / "tx_bytes").write_text("2002222\n")
        assert value(check(), tx_bytes(DEV)) == "2002222"

        # A Lustre stats file with new counts under the same label sets.
        text = osc_stats.read_text()
        osc_stats.write_text(text.replace("ost_read", "ost_read", 1).replace(" 1 samples", " 7 samples", 1))
        assert check() != first

        # A counter replaced by rename (as the simulator writes): seen, the old file is not read.
        (tmp_path / "new").write_text("3003333\n")
        os.replace(tmp_path / "new", counters / "tx_bytes")
        assert value(check(), tx_bytes(DEV)) == "3003333"
        settle(root)
        check()
        kept = exp.efa.files.open_fds
        assert kept > 0

        # The PCI device's numa_node (read through the device/ symlink) replaced by rename.
        numa = Path(os.path.realpath(efa_dir / "device")) / "numa_node"
        (tmp_path / "numa").write_text("1\n")
        os.replace(tmp_path / "numa", numa)
        assert 'numa_node="1"' in check()
        settle(root)
        check()

        # A counter file made unreadable (root ignores chmod: replaced by a directory, which
        # fails to read): counted once per scrape, as a fresh read counts it, the rest served.
        (counters / "rx_drops").unlink()
        (counters / "rx_drops").mkdir()
        served = check(errors_added=1)
        assert value(served, tx_bytes(DEV)) == "3003333"
        assert f'fmdiag_efa_rx_drops_total{{device="{DEV}",port="1"}}' not in served
        check(errors_added=1)

        # A kept descriptor that stops reading (ENODEV, as after a hot-unplug of a device that
        # is back already): the device is read afresh in the same scrape, nothing is counted.
        settle(root)
        check(errors_added=1)
        real_pread = os.pread
        failing = set(
            exp.efa.files._kept[os.path.join(paths.sysfs, "class", "infiniband", DEV)].files.values()
        )

        def pread(fd: int, n: int, offset: int) -> bytes:
            if fd in failing:  # the kept descriptors are dead; files opened afresh read fine
                failing.clear()
                raise OSError(errno.ENODEV, "No such device")
            return real_pread(fd, n, offset)

        (counters / "tx_bytes").write_text("4004444\n")
        assert value(check(errors_added=1, pread=pread), tx_bytes(DEV)) == "4004444"
        assert not failing  # the dead descriptors were tried, and the device read afresh

        # The device is removed (hot-unplug): gone from the output, its descriptors closed.
        shutil.rmtree(os.path.realpath(efa_dir))
        efa_dir.unlink()
        gone = check()
        assert tx_bytes(DEV) not in gone and value(gone, tx_bytes(OTHER)) is not None
        assert value(gone, "fmdiag_efa_devices") == "1"
        assert 0 < exp.efa.files.open_fds < kept
        assert open_fds() == baseline_fds + exp.efa.files.open_fds + watch  # + the inotify descriptor

        # It comes back under the same name with other values: the new device is read.
        other_dir = Path(os.path.realpath(paths.sysfs / "class" / "infiniband" / OTHER))
        shutil.copytree(other_dir, other_dir.parent.parent / "again" / DEV, symlinks=True)
        efa_dir.symlink_to(other_dir.parent.parent / "again" / DEV)
        back = check()
        assert value(back, tx_bytes(DEV)) == value(back, tx_bytes(OTHER))
        settle(root)
        check()
        check()
    finally:
        exp.close()
    assert open_fds() == baseline_fds  # every kept descriptor closed with the exporter


def test_series_texts_follow_the_label_dicts_and_forget_unused_ones() -> None:
    sets = LabelSets(("device", "port"))
    texts = SeriesTexts()

    def scrape(devices: dict[str, int]) -> tuple[bytes, bytes]:
        fams = Families()
        add = fams.adder("fmdiag_efa_tx_bytes_total", ("device", "port"))
        for dev, n in devices.items():
            add(sets.get((dev, "1")), n)
        sets.end_scrape()
        return render(fams, Format.TEXT, texts), render(fams, Format.TEXT)

    kept, uncached = scrape({"a": 1, "b": 2})
    assert kept == uncached
    kept, uncached = scrape({"a": 5, "b": 2})  # a value changes, the label dicts are the same
    assert kept == uncached and b'fmdiag_efa_tx_bytes_total{device="a",port="1"} 5\n' in kept
    assert len(texts) == 2
    kept, uncached = scrape({"c": 9})  # a and b are gone, c is new
    assert kept == uncached and b'device="a"' not in kept
    assert len(texts) == 1  # only what the last render used is kept


def test_a_label_text_is_escaped_the_same_when_kept() -> None:
    sets = LabelSets(("device", "counter"))
    texts = SeriesTexts()
    for _ in range(3):
        fams = Families()
        add = fams.adder("fmdiag_efa_device_other_counter_total", ("device", "counter"))
        add(sets.get(("a", 'we"ird\\name\n')), 1)
        sets.end_scrape()
        body = render(fams, Format.TEXT, texts)
        assert body == render(fams, Format.TEXT)
        assert b'counter="we\\"ird\\\\name\\n"' in body


def test_label_sets_hand_out_one_dict_per_label_set_and_let_unused_ones_go() -> None:
    sets = LabelSets(("fs", "ost"))
    a = sets.get(("train", "OST0000"))
    assert a == {"fs": "train", "ost": "OST0000"}
    assert sets.get(("train", "OST0000")) is a
    assert sets.get(("train", "OST0001")) == {"fs": "train", "ost": "OST0001"}
    sets.end_scrape()
    assert sets.get(("train", "OST0000")) is a  # used in the last scrape: the same dict
    sets.end_scrape()
    sets.end_scrape()  # a scrape without it
    assert len(sets) == 0
    assert sets.get(("train", "OST0000")) is not a


def test_a_directory_watch_reports_entry_changes_not_content_writes(tmp_path: Path) -> None:
    watch = DirWatch.open()
    assert watch is not None  # Linux: inotify is there
    try:
        (tmp_path / "counter").write_text("1\n")
        wd = watch.add(str(tmp_path))
        assert wd is not None and watch.changed() == set()
        (tmp_path / "counter").write_text("2\n")  # in place: a kept descriptor sees it, no event
        assert watch.changed() == set()
        (tmp_path / "new").write_text("3\n")
        os.replace(tmp_path / "new", tmp_path / "counter")  # replaced by rename: an event
        assert watch.changed() == {wd}
        assert watch.changed() == set()  # drained
        assert watch.add(str(tmp_path / "counter")) is None  # not a directory
    finally:
        watch.close()


def test_a_collector_dropped_without_close_releases_its_descriptors(tmp_path: Path) -> None:
    root, paths = node(tmp_path)
    settle(root)
    baseline = open_fds()
    exp = Exporter(paths)
    exp.text()
    exp.text()
    assert exp.efa.files.open_fds > 0 and open_fds() > baseline
    del exp  # no close(): a test's or a failed start's leftovers
    assert open_fds() == baseline


def test_equal_label_sets_in_another_key_order_are_rendered_in_their_own_order() -> None:
    texts = SeriesTexts()
    for labels in ({"device": "a", "port": "1"}, {"port": "1", "device": "a"}):
        fams = Families()
        fams.add("fmdiag_efa_tx_bytes_total", 7, labels)  # a fresh dict each scrape, equal content
        body = render(fams, Format.TEXT, texts)
        assert body == render(fams, Format.TEXT)
    assert b'fmdiag_efa_tx_bytes_total{port="1",device="a"} 7\n' in body
