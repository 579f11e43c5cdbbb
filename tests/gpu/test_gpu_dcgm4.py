"""dcgm-exporter 4.x parity: DCGM_EXP_* counters, the hostname/Hostname label, XIDs through 172."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fmdiag import catalog
from fmdiag.exporters import gpu_exp, gpu_state_file
from fmdiag.exporters.collector import CollectorContext
from fmdiag.exporters.collectors.gpu import GpuCollector
from fmdiag.exporters.families import Families
from fmdiag.exporters.gpu_state_file import GpuState
from fmdiag.exporters.options import OptionError

Found = dict[tuple[str, frozenset[tuple[str, str]]], float]


def gpus(n: int = 3, **changes: Any) -> list[GpuState]:
    out = [
        GpuState(index=i, uuid=f"GPU-{i}", pci_bus_id=f"00000000:{0x18 + i:02X}:00.0", name="NVIDIA B200")
        for i in range(n)
    ]
    for key, value in changes.items():
        setattr(out[1], key, value)
    return out


def write(path: Path, states: Sequence[GpuState]) -> None:
    gpu_state_file.write(path, states, time_s=time.time(), hostname="p6-004", driver_version="580.65.06")


def scrape(path: Path, scrapes: int = 1, **options: str) -> Found:
    c = GpuCollector(CollectorContext(options={"simulated-state": str(path), "events": "off", **options}))
    try:
        for _ in range(scrapes):
            found = {(s.name, frozenset(s.labels.items())): s.value for f in c.collect() for s in f.samples}
    finally:
        c.close()
    return found


def select(found: Found, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    return {ls: v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls}


def test_the_host_label_defaults_to_hostname_and_can_be_spelled_hostname(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write(path, gpus())
    new, old = scrape(path), scrape(path, **{"hostname-label": "Hostname"})
    for found, label in ((new, "hostname"), (old, "Hostname")):
        other = {"hostname": "Hostname", "Hostname": "hostname"}[label]
        gpu_series = [ls for (n, ls) in found if n.startswith("DCGM_") or n.startswith("fmdiag_gpu_lost")]
        assert gpu_series and all((label, "p6-004") in ls for ls in gpu_series)
        assert not any(k == other for ls in gpu_series for k, _ in ls)
    with pytest.raises(
        OptionError, match=r"--collector\.gpu\.hostname-label='host': expected one of hostname"
    ):
        GpuCollector(CollectorContext(options={"hostname-label": "host"}))


def test_the_catalog_takes_either_spelling_and_nothing_else() -> None:
    labels = {"gpu": "0", "UUID": "U", "pci_bus_id": "b", "device": "nvidia0", "modelName": "m"}
    fam = Families()
    fam.add("DCGM_FI_DEV_GPU_TEMP", 40, {**labels, "hostname": "h"})
    fam.add("DCGM_FI_DEV_GPU_TEMP", 41, {**labels, "Hostname": "h"})
    with pytest.raises(ValueError, match="not catalogued"):
        fam.add("DCGM_FI_DEV_GPU_TEMP", 42, {**labels, "HOSTNAME": "h"})
    with pytest.raises(ValueError, match=r"labels missing \['Hostname'\]"):
        fam.add("DCGM_FI_DEV_GPU_TEMP", 43, labels)
    assert catalog.LABEL_SPELLINGS["Hostname"][0] == "hostname", "the default is current dcgm-exporter's"


def test_xid_count_has_a_zero_series_per_gpu_without_xids(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write(path, gpus())
    found = scrape(path)
    zero = select(found, "DCGM_EXP_XID_ERRORS_COUNT")
    # events are off here, so no listener: no XID series at all (nothing is known)
    assert zero == {}
    c = GpuCollector(CollectorContext(options={"simulated-state": str(path)}))
    try:
        c.collect()
        write(path, gpus(xid_events=[145, 145, 171]))
        deadline = time.monotonic() + 10
        while True:
            found = {(s.name, frozenset(s.labels.items())): s.value for f in c.collect() for s in f.samples}
            if select(found, "DCGM_EXP_XID_ERRORS_COUNT", xid="171") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        c.close()
    window = {"window_size_in_ms": "300000"}
    assert select(found, "DCGM_EXP_XID_ERRORS_COUNT", gpu="1", xid="145", **window) != {}
    assert list(select(found, "DCGM_EXP_XID_ERRORS_COUNT", gpu="1", xid="145").values()) == [2]
    for quiet in ("0", "2"):
        series = select(found, "DCGM_EXP_XID_ERRORS_COUNT", gpu=quiet)
        assert list(series.values()) == [0] and not any(k == "xid" for ls in series for k, _ in ls)
    assert list(
        select(found, "fmdiag_gpu_xid_errors_total", gpu="1", xid="171", action="workflow").values()
    ) == [1]


def test_clock_events_are_counted_per_dcgm_reason_over_the_window(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write(path, gpus(clocks_event_reasons=0xC0))
    found = scrape(path, scrapes=3)
    window = {"window_size_in_ms": "300000"}
    assert list(
        select(found, "DCGM_EXP_CLOCK_EVENTS_COUNT", gpu="1", clock_event="hw_thermal", **window).values()
    ) == [3]
    assert list(
        select(found, "DCGM_EXP_CLOCK_EVENTS_COUNT", gpu="1", clock_event="hw_power_brake").values()
    ) == [3]
    quiet = select(found, "DCGM_EXP_CLOCK_EVENTS_COUNT", gpu="0")
    assert list(quiet.values()) == [0] and not any(k == "clock_event" for ls in quiet for k, _ in ls)
    assert set(catalog.DCGM_CLOCK_EVENTS) == set(catalog.CLOCK_EVENT_REASONS), "the same bits, two spellings"


def test_clock_event_window_forgets_old_samples() -> None:
    w = gpu_exp.ClockEventWindow(60.0)
    w.add("0", 0x8, now=100.0)
    w.add("0", 0x48, now=150.0)
    assert w.counts("0", now=155.0) == {"hw_slowdown": 2, "hw_thermal": 1}
    assert w.counts("0", now=200.0) == {"hw_slowdown": 1, "hw_thermal": 1}
    assert w.counts("0", now=300.0) == {}
    w.add("1", 0x1, now=300.0)
    w.forget({"0"})
    assert w.counts("1", now=300.0) == {}


def test_health_status_follows_dcgm_watches(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write(path, gpus(ecc_dbe_volatile=1, clocks_event_reasons=0x40, recovery_action=1))
    found = scrape(path)
    watch = {
        dict(ls)["health_watch"]: (v, dict(ls)["health_error_code"])
        for ls, v in select(found, "DCGM_EXP_GPU_HEALTH_STATUS", gpu="1").items()
    }
    assert watch["MEM"] == (20, "DCGM_FR_VOLATILE_DBE_DETECTED")
    assert watch["THERMAL"] == (10, "DCGM_FR_CLOCK_THROTTLE_THERMAL")
    assert watch["POWER"] == (0, "DCGM_FR_OK")
    assert watch["ALL"] == (20, "DCGM_FR_GPU_RECOVERY_RESET")
    assert set(watch) <= set(catalog.HEALTH_WATCHES)
    healthy = select(found, "DCGM_EXP_GPU_HEALTH_STATUS", gpu="0")
    assert healthy and set(healthy.values()) == {0}


def test_health_rules_as_pure_functions() -> None:
    def find(**readings: Any) -> dict[str, tuple[int, str]]:
        return {f.watch: (f.result, f.code) for f in gpu_exp.health(gpu_exp.HealthReadings(**readings))}

    assert find() == {}, "a watch without readings is left out, not reported as PASS"
    assert find(pcie_replays_per_minute=9.0)["PCIE"] == (10, "DCGM_FR_PCI_REPLAY_RATE")
    assert find(pcie_replays_per_minute=8.0)["PCIE"] == (0, "DCGM_FR_OK")
    assert find(nvlink_recovery_failed_delta=1, nvlink_effective_errors_delta=3)["NVLINK"] == (
        20,
        "DCGM_FR_NVLINK_DOWN",
    )
    assert find(ecc_dbe_volatile=0, row_remap_failure=False, remapped_uncorrectable_delta=2)["MEM"] == (
        10,
        "DCGM_FR_PENDING_ROW_REMAP",
    )
    assert find(recovery_action=3)["ALL"] == (10, "DCGM_FR_GPU_RECOVERY_DRAIN_P2P")
    assert find(recovery_action=2)["ALL"] == (20, "DCGM_FR_GPU_RECOVERY_REBOOT")
    assert gpu_exp.rate_per_minute((0.0, 10), (30.0, 14)) == 8.0
    assert gpu_exp.rate_per_minute(None, (30.0, 14)) is None
    assert gpu_exp.rate_per_minute((0.0, 10), (30.0, 2)) is None, "a counter reset is no rate"


def test_p2p_status_is_opt_in_and_names_every_peer(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write(path, gpus(nvlink_p2p_status=4))
    assert not select(scrape(path), "DCGM_EXP_P2P_STATUS")
    found = scrape(path, **{"p2p-status": "on"})
    from_0 = {
        dict(ls)["peer_gpu"]: (v, dict(ls)["link_status"])
        for ls, v in select(found, "DCGM_EXP_P2P_STATUS", gpu="0").items()
    }
    assert from_0 == {"1": (4, "DisabledByRegKey"), "2": (0, "OK")}
    assert len(select(found, "DCGM_EXP_P2P_STATUS")) == 6  # n * (n - 1), no GPU with itself


def test_xids_through_172_each_have_an_action_tier() -> None:
    tiers = catalog.XID_ACTIONS
    assert catalog.XID_CATALOG_MAX == 172
    assert all(tiers.get(x) for x in range(143, 173)), sorted(set(range(143, 173)) - set(tiers))
    assert {tiers[x] for x in range(144, 151)} == {"workflow"}  # NVLink 5 errors
    assert tiers[154] == "recovery_action"
    assert tiers[171] == tiers[172] == tiers[48] == "workflow"  # they refine an XID 48
    assert set(tiers.values()) | {"unknown"} == set(catalog.XID_ACTION_MEANING)
    assert catalog.GPU_RECOVERY_ACTIONS[2] == "node_reboot"
    assert set(catalog.GPU_RECOVERY_OUT_OF_SERVICE) < set(catalog.GPU_RECOVERY_ACTIONS)


def test_fb_reserved_is_in_the_default_set_as_in_dcgm_exporter_4(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write(path, gpus(fb_reserved_mib=1234))
    found = scrape(path)
    assert list(select(found, "DCGM_FI_DEV_FB_RESERVED", gpu="1").values()) == [1234]  # MiB
    metric = catalog.get("DCGM_FI_DEV_FB_RESERVED")
    assert metric.default and metric.dcgm_default
