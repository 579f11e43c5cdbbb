"""Hypothesis against the EFA collector: any file contents, missing or odd files, files and
devices vanishing mid-scrape. The scrape never raises; good files are still exported; every
bad one is counted."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.exporters import kept_files
from fmdiag.exporters.collector import CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors import efa
from fmdiag.exporters.collectors.efa import EfaCollector, parse_counter

PCI = "0000:4f:00.0"
DEV = "rdmap79s0"
PORT_FILES = ["tx_bytes", "rx_bytes", "rx_drops", "retrans_pkts", "future_counter"]
DEVICE_FILES = ["submitted_cmds", "cmds_err", "another_future_counter"]

# What a file can be: good content, anything, or not a readable file at all.
GOOD = {
    "device/vendor": b"0x1d0f\n",
    "device/numa_node": b"1\n",
    "fw_ver": b"0.0.0.0\n",
    "node_guid": b"0ab1:23ff:fe45:6789\n",
    "ports/1/state": b"4: ACTIVE\n",
    "ports/1/phys_state": b"5: LinkUp\n",
    "ports/1/rate": b"100 Gb/sec (4X EDR)\n",
    "ports/1/link_layer": b"Unspecified\n",
    "ports/1/hw_counters/lifespan": b"10\n",
    **{f"ports/1/hw_counters/{f}": b"1234567\n" for f in PORT_FILES},
    **{f"hw_counters/{f}": b"42\n" for f in DEVICE_FILES},
}

contents = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 2**70).map(lambda n: f"{n}\n".encode()),  # beyond 64 bits too
    st.integers(-(2**64), -1).map(lambda n: f"{n}\n".encode()),
    st.binary(min_size=4090, max_size=5000),  # larger than a sysfs page
    st.sampled_from(
        [b"", b"\n", b"\x00" * 8, b"4: ACT", b"100 Gb", "٣٤".encode(), b"12345678901234567890123"]
    ),
)
kinds = st.one_of(
    st.tuples(st.just("good"), st.just(b"")),
    st.tuples(st.just("content"), contents),
    st.tuples(st.sampled_from(["missing", "directory", "dangling"]), st.just(b"")),
)


def build(root: Path, files: dict[str, tuple[str, bytes]]) -> Path:
    sysfs = root / "sys"
    pci = sysfs / "devices" / "pci0000:00" / PCI
    dev = pci / "infiniband" / DEV
    dev.mkdir(parents=True)
    (dev / "device").symlink_to(f"../../../{PCI}")
    (sysfs / "class" / "infiniband").mkdir(parents=True)
    (sysfs / "class" / "infiniband" / DEV).symlink_to(f"../../devices/pci0000:00/{PCI}/infiniband/{DEV}")
    for rel, (kind, data) in files.items():
        path = dev / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "good":
            path.write_bytes(GOOD[rel])
        elif kind == "content":
            path.write_bytes(data)
        elif kind == "directory":
            path.mkdir()
        elif kind == "dangling":
            path.symlink_to("no-such-file")
    return sysfs


def run(sysfs: Path) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], int]:
    errors = ErrorReporter()
    collector = EfaCollector(CollectorContext(paths=Paths(sysfs=sysfs), errors=errors))
    try:
        fams = list(collector.collect())
    finally:
        collector.close()
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}
    return values, errors.count("efa")


def valid_counter(kind: str, data: bytes, rel: str) -> int | None:
    raw = GOOD[rel] if kind == "good" else data if kind == "content" else None
    if raw is None:
        return None
    try:
        return parse_counter(raw)
    except ValueError:
        return None


@settings(max_examples=150)
@given(st.fixed_dictionaries({rel: kinds for rel in GOOD}))
def test_any_tree_scrapes_and_keeps_good_counters(files: dict[str, tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sysfs = build(Path(tmp), files)
        values, n_errors = run(sysfs)  # must not raise
        # The same tree through kept descriptors (as on a settled sysfs): the first scrape
        # opens them, the second re-reads with pread; both must see exactly the same.
        with mock.patch.object(kept_files, "RACY_NS", -(10**19)):
            kept = EfaCollector(CollectorContext(paths=Paths(sysfs=sysfs)))
            try:
                for _ in range(2):
                    again = {
                        (s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in kept.collect()
                        for s in f.samples
                    }
                    assert again == values
            finally:
                kept.close()
            assert kept.files.open_fds == 0
    assert ("fmdiag_efa_devices", ()) in values
    vendor_kind, vendor_data = files["device/vendor"]
    is_efa = vendor_kind == "good" or (vendor_kind == "content" and vendor_data.strip().lower() == b"0x1d0f")
    if not is_efa:
        assert values[("fmdiag_efa_devices", ())] == 0
        assert len(values) == 1
        return
    assert values[("fmdiag_efa_devices", ())] == 1
    bad = 0
    for rel, (kind, data) in files.items():
        if not rel.startswith(("ports/1/hw_counters/", "hw_counters/")) or rel.endswith("lifespan"):
            continue
        name = rel.rsplit("/", 1)[1]
        port = rel.startswith("ports/")
        known = (EFA_PORT_COUNTERS if port else EFA_DEVICE_COUNTERS).get(name)
        labels = {"device": DEV, "port": "1"} if port else {"device": DEV}
        if known:
            key = (known[0], tuple(sorted(labels.items())))
        else:
            other = "fmdiag_efa_port_other_counter_total" if port else "fmdiag_efa_device_other_counter_total"
            key = (other, tuple(sorted({**labels, "counter": name}.items())))
        expected = valid_counter(kind, data, rel)
        if expected is None:
            assert key not in values, rel
            bad += kind != "missing"
        else:
            assert values[key] == expected, rel
    assert n_errors >= bad
    # The info series is always there, whatever its labels could be read as.
    assert sum(1 for name, _ in values if name == "fmdiag_efa_info") == 1


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "efa" / "nitro_v4" / "sys"


def _where(path: object) -> str:
    """The directory a listdir() call lists (the collector lists directory descriptors)."""
    return os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else str(path)


def _vanishing_listdir(
    victim_index: int, on_list: Callable[[list[str], str], None]
) -> Callable[..., list[str]]:
    real = os.listdir
    calls = {"n": 0}

    def listdir(path: object = ".") -> list[str]:
        names = real(path)  # type: ignore[call-overload]
        if calls["n"] == victim_index:
            on_list(names, _where(path))
        calls["n"] += 1
        return list(names)

    return listdir


@settings(max_examples=40)
@given(victim=st.integers(0, 8), pick=st.integers(0, 40))
def test_file_vanishing_between_listing_and_reading(victim: int, pick: int) -> None:
    """A listed file is deleted before it is read: that value is skipped and counted."""
    with tempfile.TemporaryDirectory() as tmp:
        sysfs = Path(tmp) / "sys"
        shutil.copytree(FIXTURE, sysfs, symlinks=True)
        removed: list[str] = []

        def on_list(names: list[str], path: str) -> None:
            if os.path.isdir(path) and names:
                target = os.path.join(path, sorted(names)[pick % len(names)])
                if os.path.isfile(target) and not os.path.islink(target):
                    os.unlink(target)
                    removed.append(target)

        with mock.patch.object(efa.os, "listdir", _vanishing_listdir(victim, on_list)):
            values, n_errors = run(sysfs)
    assert ("fmdiag_efa_devices", ()) in values
    if removed and "hw_counters" in removed[0]:
        assert n_errors == 1


def test_device_vanishing_mid_scrape_is_not_an_error(tmp_path: Path) -> None:
    """Hot-unplug during a scrape: the device is dropped, nothing is counted as a parse error."""
    sysfs = tmp_path / "sys"
    shutil.copytree(FIXTURE, sysfs, symlinks=True)
    victim = os.path.realpath(sysfs / "class" / "infiniband" / "rdmap79s0")

    real = os.listdir

    def listdir(path: object = ".") -> list[str]:
        names = real(path)  # type: ignore[call-overload]
        if os.path.exists(victim) and os.path.realpath(_where(path)).startswith(victim):
            shutil.rmtree(victim)  # after its ports/ directory was listed
        return list(names)

    with mock.patch.object(efa.os, "listdir", listdir):
        values, n_errors = run(sysfs)
    assert not os.path.exists(victim)
    assert n_errors == 0
    assert values[("fmdiag_efa_devices", ())] == 1
    assert not any(
        dict(lab).get("device") == "rdmap79s0" and name == "fmdiag_efa_info" for name, lab in values
    )
