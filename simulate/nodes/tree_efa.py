"""EFA (and other RDMA) devices in sysfs, printed as the rdma core and the EFA driver print them.

``sys/class/infiniband/<dev>`` symlinks into ``sys/devices/pci<dom>:<bus>/<addr>/`` with the
PCI ``vendor``/``numa_node`` files and the rdma core's ``infiniband/<dev>/`` files
(``ports/1/{state,phys_state,rate,link_layer}``, device and port ``hw_counters``), exactly
as ``core/sysfs.c`` and ``efa_verbs.c`` print them. ConnectX devices can be added beside
them, so collectors can be shown to keep to EFA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.simulate.cluster.instruments import EFA_SRD_COUNTERS, HW_COUNTERS_LIFESPAN_MS
from fmdiag.simulate.nodes.readings import EfaDeviceState, NodeState
from fmdiag.simulate.nodes.tree_write import Link, TreeWriter

#: PCI device id of the EFA function on a p5-class instance (EFA v2 hardware).
EFA_PCI_DEVICE = "0xefa1"

_PORT_STATES = {0: "NOP", 1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
_PHYS_STATES = (
    "<unknown>",
    "Sleep",
    "Polling",
    "Disabled",
    "PortConfigurationTraining",
    "LinkUp",
    "LinkErrorRecovery",
    "Phy Test",
)
#: ib_port_speed -> (name, rate in deci-Gb/s per lane), as ``rate_show`` in ``core/sysfs.c``.
_SPEEDS = {
    "SDR": 25,
    "DDR": 50,
    "QDR": 100,
    "FDR10": 100,
    "FDR": 140,
    "EDR": 250,
    "HDR": 500,
    "NDR": 1000,
    "XDR": 2000,
}


def port_state_text(state: int) -> str:
    return f"{state}: {_PORT_STATES.get(state, 'UNKNOWN')}\n"


def phys_state_text(phys_state: int) -> str:
    name = _PHYS_STATES[phys_state] if 0 <= phys_state < len(_PHYS_STATES) else "<unknown>"
    return f"{phys_state}: {name}\n"


def efa_speed_width(gbps: int) -> tuple[str, int]:
    """The (speed, lane count) the EFA driver reports for a link of ``gbps`` Gbit/s.

    ``efa_link_gbps_to_speed_and_width`` in ``drivers/infiniband/hw/efa/efa_verbs.c``.
    """
    table = (
        (1600, "XDR", 8),
        (800, "NDR", 8),
        (400, "HDR", 8),
        (200, "HDR", 4),
        (120, "FDR10", 12),
        (100, "EDR", 4),
        (60, "DDR", 12),
        (50, "HDR", 1),
        (40, "FDR10", 4),
        (30, "SDR", 12),
    )
    for floor, speed, width in table:
        if gbps >= floor:
            return speed, width
    return "EDR", 1


def rate_text(speed: str, width: int) -> str:
    """``ports/<n>/rate`` as ``rate_show`` prints it, e.g. ``100 Gb/sec (4X EDR)``."""
    rate = _SPEEDS.get(speed, 25) * width
    half = ".5" if rate % 10 else ""
    return f"{rate // 10}{half} Gb/sec ({width}X {speed})\n"


def _pci_parts(address: str) -> tuple[str, str]:
    """("0000", "4f") from "0000:4f:00.0": the domain and bus a device hangs under."""
    parts = address.split(":")
    if len(parts) != 3 or len(parts[0]) != 4 or len(parts[1]) != 2:
        raise ValueError(f"PCI address {address!r}: expected DDDD:BB:SS.F")
    return parts[0], parts[1]


def _pci_dir(address: str) -> str:
    """The device's directory relative to ``sys/devices`` (root complex per bus: a flat topology)."""
    domain, bus = _pci_parts(address)
    return f"pci{domain}:{bus}/{address}"


def _efa_device_spec(dev: EfaDeviceState, srd: bool) -> dict[str, str | Link]:
    ib = f"infiniband/{dev.name}"
    spec: dict[str, str | Link] = {
        "vendor": f"{dev.vendor}\n",
        "device": f"{EFA_PCI_DEVICE}\n",
        "subsystem_vendor": f"{dev.vendor}\n",
        "subsystem_device": "0x0000\n",
        "class": "0x020000\n",
        "numa_node": f"{dev.numa_node}\n",
        f"{ib}/device": Link(f"../../../{dev.pci_address}"),
        f"{ib}/fw_ver": f"{dev.fw_ver}\n",
        f"{ib}/node_guid": f"{dev.node_guid}\n",
        f"{ib}/sys_image_guid": f"{dev.node_guid}\n",
        f"{ib}/node_type": "7: unspecified\n",  # RDMA_NODE_UNSPECIFIED
        f"{ib}/ports/1/state": port_state_text(dev.state),
        f"{ib}/ports/1/phys_state": phys_state_text(dev.phys_state),
        f"{ib}/ports/1/rate": rate_text(*efa_speed_width(dev.rate_gbps)),
        f"{ib}/ports/1/link_layer": "Unknown\n",  # IB_LINK_LAYER_UNSPECIFIED
        f"{ib}/ports/1/lid": "0x0\n",
        f"{ib}/ports/1/sm_lid": "0x0\n",
        f"{ib}/ports/1/lid_mask_count": "0\n",
        f"{ib}/ports/1/sm_sl": "0\n",
        f"{ib}/ports/1/cap_mask": "0x00000000\n",
        f"{ib}/hw_counters/lifespan": f"{HW_COUNTERS_LIFESPAN_MS}\n",
        f"{ib}/ports/1/hw_counters/lifespan": f"{HW_COUNTERS_LIFESPAN_MS}\n",
    }
    port = {name: 0 for name in EFA_PORT_COUNTERS}
    port.update(dev.port_counters)
    for name, value in port.items():
        if name in EFA_SRD_COUNTERS and not srd:
            continue
        spec[f"{ib}/ports/1/hw_counters/{name}"] = f"{int(value)}\n"
    device = {name: 0 for name in EFA_DEVICE_COUNTERS}
    device.update(dev.device_counters)
    for name, value in device.items():
        spec[f"{ib}/hw_counters/{name}"] = f"{int(value)}\n"
    return spec


@dataclass(frozen=True)
class _RdmaDevice:
    name: str
    pci_address: str
    spec: dict[str, str | Link]


def mellanox_devices(count: int) -> list[EfaDeviceState]:
    """ConnectX-6 InfiniBand HCAs (vendor 0x15b3), for proving collectors filter by vendor."""
    return [
        EfaDeviceState(
            name=f"mlx5_{i}",
            pci_address=f"0000:{0x0A + i:02x}:00.0",
            numa_node=0,
            node_guid=f"b859:9f03:00{i:02x}:1a2b",
            fw_ver="20.31.1014",
            rate_gbps=200,
            vendor="0x15b3",
        )
        for i in range(count)
    ]


def _mellanox_spec(dev: EfaDeviceState, time_s: float) -> dict[str, str | Link]:
    ib = f"infiniband/{dev.name}"
    words = int(time_s) % 1_000_000 * 1_000  # PortXmitData counts 4-byte words
    spec: dict[str, str | Link] = {
        "vendor": "0x15b3\n",
        "device": "0x101b\n",
        "class": "0x020700\n",
        "numa_node": f"{dev.numa_node}\n",
        f"{ib}/device": Link(f"../../../{dev.pci_address}"),
        f"{ib}/fw_ver": f"{dev.fw_ver}\n",
        f"{ib}/node_guid": f"{dev.node_guid}\n",
        f"{ib}/node_type": "1: CA\n",
        f"{ib}/hca_type": "MT4123\n",
        f"{ib}/board_id": "MT_0000000223\n",
        f"{ib}/ports/1/state": port_state_text(4),
        f"{ib}/ports/1/phys_state": phys_state_text(5),
        f"{ib}/ports/1/rate": rate_text("HDR", 4),
        f"{ib}/ports/1/link_layer": "InfiniBand\n",
        f"{ib}/ports/1/lid": "0x1\n",
        f"{ib}/ports/1/counters/port_xmit_data": f"{words}\n",
        f"{ib}/ports/1/counters/port_rcv_data": f"{words}\n",
        f"{ib}/ports/1/counters/port_xmit_packets": f"{words // 1024}\n",
        f"{ib}/ports/1/counters/port_rcv_packets": f"{words // 1024}\n",
        f"{ib}/ports/1/counters/symbol_error": "0\n",
        f"{ib}/ports/1/counters/link_downed": "0\n",
        f"{ib}/ports/1/counters/port_rcv_errors": "0\n",
        f"{ib}/ports/1/hw_counters/out_of_buffer": "0\n",
        f"{ib}/ports/1/hw_counters/out_of_sequence": "0\n",
        f"{ib}/ports/1/hw_counters/duplicate_request": "0\n",
        f"{ib}/ports/1/hw_counters/local_ack_timeout_err": "0\n",
        f"{ib}/ports/1/hw_counters/lifespan": f"{HW_COUNTERS_LIFESPAN_MS}\n",
    }
    return spec


def _sync_devices(tree: TreeWriter, devices: Sequence[_RdmaDevice]) -> None:
    sys = tree.root / "sys"
    class_dir = sys / "class" / "infiniband"
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate RDMA device names in {names}")
    # A device leaves through its class link first, so a reader never follows a dangling one.
    tree.prune(class_dir, names)
    wanted_dirs = {_pci_dir(d.pci_address) for d in devices}
    devices_root = sys / "devices"
    if devices_root.is_dir():
        for bridge in sorted(devices_root.glob("pci*")):
            for addr in sorted(p.name for p in bridge.iterdir()):
                if f"{bridge.name}/{addr}" not in wanted_dirs:
                    tree.remove(bridge / addr)
        tree.remove_empty_dirs(devices_root)
    for dev in devices:
        rel = _pci_dir(dev.pci_address)
        tree.sync_dir(devices_root / rel, dev.spec)
        tree.link(class_dir / dev.name, f"../../devices/{rel}/infiniband/{dev.name}")
    class_dir.mkdir(parents=True, exist_ok=True)


def render_rdma(tree: TreeWriter, state: NodeState, *, efa_srd: bool | None, mellanox: int) -> None:
    """Bring the RDMA devices under ``tree`` to the EFA devices of ``state`` plus ``mellanox`` HCAs.

    ``efa_srd`` forces every EFA device with (True) or without (False) the SRD counters;
    None keeps each device's ``srd_counters``.
    """
    rdma = [
        _RdmaDevice(
            d.name, d.pci_address, _efa_device_spec(d, d.srd_counters if efa_srd is None else efa_srd)
        )
        for d in state.efa
    ]
    rdma += [
        _RdmaDevice(d.name, d.pci_address, _mellanox_spec(d, state.time_s))
        for d in mellanox_devices(mellanox)
    ]
    _sync_devices(tree, rdma)
