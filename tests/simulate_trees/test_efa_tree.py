"""The EFA part of a rendered node tree, read back the way a sysfs collector reads a real one."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.simulate.cluster.instruments import EFA_SRD_COUNTERS
from fmdiag.simulate.nodes.readings import NodeState
from fmdiag.simulate.nodes.render import render_node
from fmdiag.simulate.nodes.tree_efa import efa_speed_width, rate_text

STATE_RE = re.compile(r"^(\d+): ([A-Za-z_<> ]+)\n\Z")
RATE_RE = re.compile(r"^(\d+)(\.5)? Gb/sec \((\d+)X (SDR|DDR|QDR|FDR10|FDR|EDR|HDR|NDR|XDR)\)\n\Z")


def read_int(path: Path) -> int:
    text = path.read_text()
    assert re.fullmatch(r"\d+\n", text), f"{path}: {text!r}"
    return int(text)


def read_devices(root: Path) -> dict[str, dict[str, object]]:
    """An independent reader: what an EFA collector needs from sysfs, by device name."""
    out: dict[str, dict[str, object]] = {}
    class_dir = root / "sys" / "class" / "infiniband"
    for name in sorted(os.listdir(class_dir)):
        dev = class_dir / name
        assert dev.is_symlink(), "class entries are symlinks, as in real sysfs"
        pci = Path(os.path.realpath(dev / "device"))
        port = dev / "ports" / "1"
        out[name] = {
            "vendor": (dev / "device" / "vendor").read_text().strip(),
            "pci_address": pci.name,
            "numa_node": read_int(dev / "device" / "numa_node"),
            "fw_ver": (dev / "fw_ver").read_text().strip(),
            "node_guid": (dev / "node_guid").read_text().strip(),
            "state": (port / "state").read_text(),
            "phys_state": (port / "phys_state").read_text(),
            "rate": (port / "rate").read_text(),
            "link_layer": (port / "link_layer").read_text().strip(),
            "port_counters": {
                f.name: read_int(f) for f in sorted((port / "hw_counters").iterdir()) if f.name != "lifespan"
            },
            "device_counters": {
                f.name: read_int(f) for f in sorted((dev / "hw_counters").iterdir()) if f.name != "lifespan"
            }
            if (dev / "hw_counters").is_dir()
            else {},
            "lifespan": read_int(port / "hw_counters" / "lifespan"),
        }
    return out


def test_efa_devices_read_back_equal_the_state(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    state = node(step=3)
    render_node(state, tmp_path, mellanox=2)
    devices = read_devices(tmp_path)
    efa = {n: d for n, d in devices.items() if d["vendor"] == "0x1d0f"}
    assert sorted(efa) == sorted(d.name for d in state.efa)
    assert {d["vendor"] for n, d in devices.items() if n.startswith("mlx5_")} == {"0x15b3"}
    for dev in state.efa:
        got = efa[dev.name]
        assert got["pci_address"] == dev.pci_address
        assert got["numa_node"] == dev.numa_node
        assert got["fw_ver"] == dev.fw_ver
        assert got["node_guid"] == dev.node_guid
        assert got["state"] == "4: ACTIVE\n"
        assert got["phys_state"] == "5: LinkUp\n"
        assert got["rate"] == "100 Gb/sec (4X EDR)\n"
        assert got["link_layer"] == "Unknown"
        assert got["lifespan"] == 10
        port = got["port_counters"]
        assert isinstance(port, dict)
        for counter, value in dev.port_counters.items():
            if counter in EFA_SRD_COUNTERS and not dev.srd_counters:
                assert counter not in port
            else:
                assert port[counter] == value, (dev.name, counter)
        # Every counter the driver has is a file, zero when the state does not mention it.
        expected = set(EFA_PORT_COUNTERS) | set(dev.port_counters)
        if not dev.srd_counters:
            expected -= set(EFA_SRD_COUNTERS)
        assert set(port) == expected
        assert got["device_counters"] == {
            **dict.fromkeys(EFA_DEVICE_COUNTERS, 0),
            **dev.device_counters,
        }


def test_srd_counters_exist_only_on_nitro_v4_devices(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    state = node()
    render_node(state, tmp_path)
    hw = tmp_path / "sys/class/infiniband/{}/ports/1/hw_counters"
    with_srd, without = state.efa[0].name, state.efa[1].name
    assert all((Path(str(hw).format(with_srd)) / c).is_file() for c in EFA_SRD_COUNTERS)
    assert not any((Path(str(hw).format(without)) / c).exists() for c in EFA_SRD_COUNTERS)
    # The override applies to every device, both ways, on a re-render of the same root.
    render_node(state, tmp_path, efa_srd=False)
    assert not any((Path(str(hw).format(d.name)) / c).exists() for d in state.efa for c in EFA_SRD_COUNTERS)
    render_node(state, tmp_path, efa_srd=True)
    assert all((Path(str(hw).format(d.name)) / c).is_file() for d in state.efa for c in EFA_SRD_COUNTERS)


def test_sysfs_layout_matches_real_sysfs(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    state = node()
    render_node(state, tmp_path)
    dev = state.efa[0]
    link = tmp_path / "sys/class/infiniband" / dev.name
    assert os.readlink(link) == f"../../devices/pci0000:4f/{dev.pci_address}/infiniband/{dev.name}"
    device_link = link / "device"
    assert os.readlink(device_link) == f"../../../{dev.pci_address}"
    assert Path(os.path.realpath(device_link)) == tmp_path / "sys/devices/pci0000:4f" / dev.pci_address
    assert (link / "node_type").read_text() == "7: unspecified\n"


@pytest.mark.parametrize(
    ("gbps", "text"),
    [
        (25, "25 Gb/sec (1X EDR)\n"),
        (100, "100 Gb/sec (4X EDR)\n"),
        (200, "200 Gb/sec (4X HDR)\n"),
        (400, "400 Gb/sec (8X HDR)\n"),
        (800, "800 Gb/sec (8X NDR)\n"),
        (1600, "1600 Gb/sec (8X XDR)\n"),
    ],
)
def test_rate_is_printed_like_the_kernel(gbps: int, text: str) -> None:
    got = rate_text(*efa_speed_width(gbps))
    assert got == text
    m = RATE_RE.match(got)
    assert m is not None


def test_rate_half_gigabit_and_sdr() -> None:
    assert rate_text("SDR", 1) == "2.5 Gb/sec (1X SDR)\n"
    assert rate_text("FDR", 4) == "56 Gb/sec (4X FDR)\n"


def test_port_down_states(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    state = node()
    state.efa[2].state = 1
    state.efa[2].phys_state = 3
    render_node(state, tmp_path)
    port = tmp_path / "sys/class/infiniband" / state.efa[2].name / "ports/1"
    assert (port / "state").read_text() == "1: DOWN\n"
    assert (port / "phys_state").read_text() == "3: Disabled\n"
    assert STATE_RE.match((port / "state").read_text())


def test_removed_device_disappears_and_can_return(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    full = node(step=1)
    render_node(full, tmp_path, mellanox=1)
    gone = full.efa[1]
    shrunk = node(step=2)
    shrunk.efa = [d for d in shrunk.efa if d.name != gone.name]
    render_node(shrunk, tmp_path)  # the mellanox device goes too
    names = os.listdir(tmp_path / "sys/class/infiniband")
    assert sorted(names) == sorted(d.name for d in shrunk.efa)
    assert not (tmp_path / "sys/devices/pci0000:50").exists()
    assert not (tmp_path / "sys/devices/pci0000:0a").exists()
    back = node(step=3)
    render_node(back, tmp_path)
    assert sorted(read_devices(tmp_path)) == sorted(d.name for d in back.efa)
    assert read_devices(tmp_path)[gone.name]["port_counters"]["tx_bytes"] == 30_000_001  # type: ignore[index]


def test_counters_advance_on_rerender(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    render_node(node(step=1), tmp_path)
    before = read_devices(tmp_path)
    render_node(node(step=2), tmp_path)
    after = read_devices(tmp_path)
    for name in before:
        b, a = before[name]["port_counters"], after[name]["port_counters"]
        assert isinstance(b, dict) and isinstance(a, dict)
        assert a["tx_bytes"] - b["tx_bytes"] == 10_000_000
    assert not list((tmp_path / ".staging").iterdir())
