"""Render one simulated node as the files its exporters read: sysfs, procfs, debugfs, NVML state.

:func:`render_node` writes a :class:`~fmdiag.simulate.state.NodeState` under a root directory
in the real file formats, so a collector pointed at ``<root>/sys``, ``<root>/proc`` and
``<root>/sys/kernel/debug`` cannot tell it from a node (docs/node-trees.md lists every file):

* EFA: ``sys/class/infiniband/<dev>`` symlinks into ``sys/devices/pci<dom>:<bus>/<addr>/``
  with the PCI ``vendor``/``numa_node`` files and the rdma core's ``infiniband/<dev>/`` files
  (``ports/1/{state,phys_state,rate,link_layer}``, device and port ``hw_counters``) printed
  exactly as the kernel's ``sysfs.c`` and the EFA driver print them.
* Lustre: the 2.10 ``/proc/fs/lustre`` layout, or the 2.12+ layout (stats in debugfs,
  ``rpc_stats`` still in ``/proc``, tunables in ``/sys/fs/lustre``), with ``lprocfs`` stats,
  ``rpc_stats`` and ``read_ahead_stats`` formatted as ``lprocfs_status.c``/``lproc_osc.c``
  do for that version; :func:`lctl_get_param` prints what ``lctl get_param`` would.
* Host: ``proc/stat``, ``proc/pressure/*``, ``proc/meminfo``, ``proc/uptime`` and per
  process ``proc/<pid>/{stat,status,statm,io,cmdline,comm}`` in the forms psutil parses.
* GPUs: ``nvml/state.json`` (:mod:`fmdiag.simulate.gpustate`) for the fake NVML.

Rendering again over the same root is how ``--live`` advances a node: every file is replaced
atomically, a new directory (device, mount, process) appears whole by a rename, and whatever
is no longer in the state (a removed EFA device, an unmounted filesystem, an exited
process) disappears, so fault injection needs no special code. A hidden ``.nodetree.json``
keeps what a real kernel remembers between reads (boot time, PSI averages, the RPC
histograms a single snapshot cannot give); one root must be rendered by one writer at a time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import math
import os
import resource
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.simulate import gpustate
from fmdiag.simulate.state import (
    EfaDeviceState,
    HostState,
    LustreFsState,
    LustreTargetState,
    NodeState,
    OpStat,
    ProcessState,
)

STAGING = ".staging"
HISTORY_FILE = ".nodetree.json"
HISTORY_VERSION = 1

# --------------------------------------------------------------------------------------------
# Atomic tree writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A symbolic link to create, with a target relative to the link's directory."""

    target: str


Spec = Mapping[str, "str | Link"]


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    False when the platform or filesystem cannot, so the caller falls back.
    """
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2 = False
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _renameat2 = fn
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


class _Tree:
    """Writes under one root so a concurrent reader never sees a partial file or directory.

    Temporary files and directories live in ``<root>/.staging`` (same filesystem, so
    ``os.replace``/``os.rename`` into place are atomic) and never inside a directory a
    collector lists, where a half-written ``.tmp`` file could be taken for a counter.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / STAGING
        self.staging.mkdir(parents=True, exist_ok=True)
        self._seq = 0

    def _tmp(self) -> Path:
        self._seq += 1
        return self.staging / f"{os.getpid()}-{threading.get_ident()}-{self._seq}-{uuid.uuid4().hex[:8]}"

    def write(self, path: Path, text: str) -> None:
        """Replace ``path`` with ``text`` unless it already holds exactly that.

        The new content is written to a staging file and swapped in with one
        ``renameat2(RENAME_EXCHANGE)``: a plain ``rename`` over an existing file costs ~1 ms
        on ext4 (its replace-via-rename heuristic forces the new blocks out), which a
        32-device node re-rendered every second cannot afford. Where the exchange is not
        supported, ``os.replace`` does the same job, slower.
        """
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnicodeDecodeError):
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp()
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        if path.is_file() and not path.is_symlink() and _exchange(tmp, path):
            tmp.unlink()  # now the old content, which no reader can reach any more
            return
        if path.is_dir() and not path.is_symlink():
            self.remove(path)
        os.replace(tmp, path)

    def link(self, path: Path, target: str) -> None:
        """Point the symlink ``path`` at ``target``, replacing whatever was there atomically."""
        if path.is_symlink() and os.readlink(path) == target:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp()
        os.symlink(target, tmp)
        if path.is_dir() and not path.is_symlink():
            self.remove(path)
        os.replace(tmp, path)

    def remove(self, path: Path) -> None:
        """Make ``path`` vanish in one step (rename away), then delete it at leisure."""
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
            return
        if not path.exists():
            return
        doomed = self._tmp()
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _fill(self, base: Path, spec: Spec) -> None:
        for rel, item in spec.items():
            target = base / rel
            if isinstance(item, Link):
                self.link(target, item.target)
            else:
                self.write(target, item)

    @staticmethod
    def _build(base: Path, spec: Spec) -> None:
        """Write ``spec`` into the fresh, unseen staging directory ``base`` (no atomicity needed)."""
        made = {base}
        for rel, item in spec.items():
            target = os.path.join(base, rel)
            parent = Path(os.path.dirname(target))
            if parent not in made:
                parent.mkdir(parents=True, exist_ok=True)
                made.add(parent)
            if isinstance(item, Link):
                os.symlink(item.target, target)
            else:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(item)

    def sync_dir(self, path: Path, spec: Spec) -> None:
        """Make directory ``path`` hold exactly ``spec`` (relative path -> content or Link).

        A new directory is built in staging and renamed into place, so it appears complete;
        an existing one has its changed files replaced one by one (see :meth:`write`) and
        loses the entries the spec no longer has.
        """
        if not path.is_dir() or path.is_symlink():
            if path.is_symlink() or path.exists():
                self.remove(path)
            build = self._tmp()
            build.mkdir()
            self._build(build, spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.rename(build, path)
            return
        self._update_in_place(path, spec)

    def _update_in_place(self, path: Path, spec: Spec) -> None:
        self._fill(path, spec)
        wanted = {os.path.normpath(rel) for rel in spec}
        parents: set[str] = set()
        for rel in wanted:
            d = os.path.dirname(rel)
            while d and d not in parents:
                parents.add(d)
                d = os.path.dirname(d)
        base = os.fspath(path)
        for dirpath, dirnames, filenames in os.walk(base, topdown=True):
            rel_dir = os.path.relpath(dirpath, base) if dirpath != base else ""
            for name in list(dirnames):
                rel = os.path.join(rel_dir, name)
                if rel in wanted:  # a symlink to a directory is an entry, not a place to walk
                    dirnames.remove(name)
                elif rel not in parents:
                    self.remove(Path(dirpath) / name)
                    dirnames.remove(name)
            for name in filenames:
                if os.path.join(rel_dir, name) not in wanted:
                    self.remove(Path(dirpath) / name)

    def prune(self, parent: Path, keep: Iterable[str], *, only: str | None = None) -> None:
        """Remove entries of ``parent`` not named in ``keep`` (matching glob ``only`` if given)."""
        if not parent.is_dir():
            return
        keep_set = set(keep)
        for entry in sorted(os.listdir(parent)):
            if entry in keep_set or (only is not None and not fnmatch.fnmatchcase(entry, only)):
                continue
            self.remove(parent / entry)

    def remove_empty_dirs(self, top: Path) -> None:
        if not top.is_dir():
            return
        for dirpath, _dirnames, _filenames in os.walk(top, topdown=False):
            p = Path(dirpath)
            if p != top and not any(p.iterdir()):
                with contextlib.suppress(OSError):
                    p.rmdir()

    def clean_staging(self) -> None:
        for entry in self.staging.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# What a kernel remembers between reads
# --------------------------------------------------------------------------------------------


@dataclass
class RpcHistory:
    """The osc/mdc histograms that accumulate over time (a snapshot cannot supply them).

    ``rpcs in flight``: the RPCs sent since the previous render are tallied at the state's
    current RPCs-in-flight count, as Lustre tallies each RPC at the count when it was sent.
    ``offset``: they are spread over the object offsets of a sequential stream of 64 RPCs
    of the dominant size. ``modify``: the mdc's modifying requests (close, reint) since the
    previous render, tallied at one in flight.
    """

    totals: list[int] = field(default_factory=lambda: [0, 0, 0])  # read, write, modify RPCs
    rif_read: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)
    rif_write: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)
    off_read: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)
    off_write: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)
    modify: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)

    def to_json(self) -> dict[str, list[int]]:
        return {
            "totals": self.totals,
            "rif_read": self.rif_read,
            "rif_write": self.rif_write,
            "off_read": self.off_read,
            "off_write": self.off_write,
            "modify": self.modify,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RpcHistory:
        h = cls()
        for name in ("totals", "rif_read", "rif_write", "off_read", "off_write", "modify"):
            value = raw.get(name)
            want = 3 if name == "totals" else OBD_HIST_MAX
            if isinstance(value, list) and len(value) == want and all(isinstance(v, int) for v in value):
                setattr(h, name, list(value))
        return h


@dataclass
class History:
    """The sidecar ``<root>/.nodetree.json``: state carried from one render to the next."""

    boot_time_s: int | None = None
    #: resource -> kind -> [total_us at last render, time_s of last render, avg10, avg60, avg300]
    psi: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: "osc/<instance>" or "mdc/<instance>" -> its accumulated histograms
    rpc: dict[str, RpcHistory] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> History:
        try:
            raw = json.loads((root / HISTORY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(raw, dict) or raw.get("version") != HISTORY_VERSION:
            return cls()
        h = cls()
        bt = raw.get("boot_time_s")
        h.boot_time_s = bt if isinstance(bt, int) else None
        psi = raw.get("psi")
        if isinstance(psi, dict):
            h.psi = {
                str(res): {str(kind): [float(x) for x in v] for kind, v in kinds.items() if len(v) == 5}
                for res, kinds in psi.items()
                if isinstance(kinds, dict)
            }
        rpc = raw.get("rpc")
        if isinstance(rpc, dict):
            h.rpc = {str(k): RpcHistory.from_json(v) for k, v in rpc.items() if isinstance(v, dict)}
        return h

    def save(self, tree: _Tree) -> None:
        doc = {
            "version": HISTORY_VERSION,
            "boot_time_s": self.boot_time_s,
            "psi": self.psi,
            "rpc": {k: v.to_json() for k, v in sorted(self.rpc.items())},
        }
        tree.write(tree.root / HISTORY_FILE, json.dumps(doc, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# EFA (and other RDMA devices) in sysfs
# --------------------------------------------------------------------------------------------

EFA_VENDOR = "0x1d0f"
#: PCI device id of the EFA function on a p5-class instance (EFA v2 hardware).
EFA_PCI_DEVICE = "0xefa1"
#: The SRD network counters only Nitro v4+ devices have.
SRD_COUNTERS = (
    "retrans_bytes",
    "retrans_pkts",
    "retrans_timeout_events",
    "unresponsive_remote_events",
    "impaired_remote_conn_events",
)
#: ``RDMA_HW_STATS_DEFAULT_LIFESPAN`` in ms: how long the rdma core caches hw_counters.
HW_COUNTERS_LIFESPAN_MS = 10

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
        if name in SRD_COUNTERS and not srd:
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


def _render_rdma(tree: _Tree, devices: Sequence[_RdmaDevice]) -> None:
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


# --------------------------------------------------------------------------------------------
# Lustre client: formats
# --------------------------------------------------------------------------------------------

#: ``OBD_HIST_MAX``: rows in every Lustre client histogram.
OBD_HIST_MAX = 32


@dataclass(frozen=True)
class LustreProfile:
    """How one Lustre release lays out and prints client statistics."""

    release: str  # e.g. "2.14.0", what the version file says
    layout: str  # "proc" (<= 2.11) or "debugfs" (2.12+)
    usec: str  # unit of ptlrpc latency counters: "usec", later "usecs"
    sec: str  # unit of req_timeout: "sec", later "secs"
    llite_latency: bool  # llite operations carry [usecs] min/max/sum/sumsq
    elapsed_header: bool  # stats files add start_time/elapsed_time lines
    ra_underscores: bool  # read_ahead_stats reasons spelled with underscores
    rif_first_row: int  # first "rpcs in flight" row printed (0 in 2.10, 1 later)
    mdc_rw_sections: bool  # mdc rpc_stats has read/write histograms (Data-on-MDT, 2.11+)


def lustre_profile(version: str) -> LustreProfile:
    """The profile of ``version`` ("2.10", "2.14", "2.15.4"...).

    Checked against real files: 2.10 (a 2017 client's /proc tree) and 2.14 (client
    ``lctl get_param`` output). 2.11 is treated as 2.10 plus DoM, 2.12-2.13 as 2.14, and
    2.15+ adds the ``start_time``/``elapsed_time`` header lines and underscore read-ahead
    reasons; those boundaries come from reading the source history, not from real files.
    """
    try:
        parts = [int(p) for p in version.split(".")]
        major, minor = parts[0], parts[1]
    except (ValueError, IndexError):
        raise ValueError(f"Lustre version {version!r}: expected MAJOR.MINOR[.PATCH]") from None
    release = ".".join(str(p) for p in [*parts, 0, 0][:3])
    v = (major, minor)
    if v < (2, 12):
        return LustreProfile(release, "proc", "usec", "sec", False, False, False, 0, v >= (2, 11))
    if v < (2, 15):
        return LustreProfile(release, "debugfs", "usecs", "secs", True, False, False, 1, True)
    return LustreProfile(release, "debugfs", "usecs", "secs", True, True, True, 1, True)


def _ns(t: float) -> tuple[int, int]:
    """(seconds, nanoseconds) of a Unix time; a double near 1.7e9 holds microseconds, not ns."""
    total = round(t * 1e6) * 1000
    return total // 1_000_000_000, total % 1_000_000_000


def stats_header(profile: LustreProfile, time_s: float, start_s: float, *, colon: bool = False) -> str:
    """``snapshot_time`` (and on newer releases ``start_time``/``elapsed_time``) lines.

    ``colon=True`` is the form ``lprocfs_stats_header(..., ":", ...)`` prints for histogram
    files (rpc_stats) on releases that have it.
    """
    suffix = ":" if colon else ""
    lines = [("snapshot_time", time_s)]
    if profile.elapsed_header:
        lines += [("start_time", start_s), ("elapsed_time", max(0.0, time_s - start_s))]
    out = []
    for name, t in lines:
        s, ns = _ns(t)
        out.append(f"{name + suffix:<25} {s}.{ns:09d} secs.nsecs\n")
    return "".join(out)


def stat_line(name: str, stat: OpStat, unit: str, sums: bool, sumsq: bool) -> str:
    """One counter as ``lprocfs_stats_seq_show`` prints it (the caller drops count 0)."""
    line = f"{name:<25} {stat.count} samples [{unit}]"
    if sums and stat.count > 0:
        line += f" {stat.min} {stat.max} {stat.sum}"
        if sumsq:
            line += f" {stat.sumsq}"
    return line + "\n"


# The order counters appear in (the order of the kernel's counter tables).
_LLITE_210 = (
    "dirty_pages_hits", "dirty_pages_misses", "read_bytes", "write_bytes", "brw_read", "brw_write",
    "ioctl", "open", "close", "mmap", "page_fault", "page_mkwrite", "seek", "fsync", "readdir",
    "setattr", "truncate", "flock", "getattr", "create", "link", "unlink", "symlink", "mkdir",
    "rmdir", "mknod", "rename", "statfs", "alloc_inode", "setxattr", "getxattr", "getxattr_hits",
    "listxattr", "removexattr", "inode_permission",
)  # fmt: skip
_LLITE_214 = (
    "read_bytes", "write_bytes", "read", "write", "ioctl", "open", "close", "mmap", "page_fault",
    "page_mkwrite", "seek", "fsync", "readdir", "setattr", "truncate", "flock", "getattr",
    "fallocate", "create", "link", "unlink", "symlink", "mkdir", "rmdir", "mknod", "rename",
    "statfs", "setxattr", "getxattr", "getxattr_hits", "listxattr", "removexattr",
    "inode_permission", "opencount", "openclosetime",
)  # fmt: skip
#: llite counters newer releases added; a 2.10 client has no such line.
_LLITE_NOT_IN_210 = frozenset(_LLITE_214) - frozenset(_LLITE_210)
_PTLRPC_ORDER = (
    "req_waittime", "req_qdepth", "req_active", "req_timeout", "reqbuf_avail",
    "ldlm_glimpse_enqueue", "ldlm_plain_enqueue", "ldlm_extent_enqueue", "ldlm_flock_enqueue",
    "ldlm_ibits_enqueue", "mds_reint_setattr", "mds_reint_create", "mds_reint_link",
    "mds_reint_unlink", "mds_reint_rename", "mds_reint_open", "mds_reint_setxattr",
    "read_bytes", "write_bytes",
    "ost_reply", "ost_getattr", "ost_setattr", "ost_read", "ost_write", "ost_create", "ost_destroy",
    "ost_get_info", "ost_connect", "ost_disconnect", "ost_punch", "ost_open", "ost_close",
    "ost_statfs", "ost_sync", "ost_set_info", "ost_quotactl", "ost_ladvise", "ost_fallocate",
    "mds_getattr", "mds_getattr_name", "mds_close", "mds_reint", "mds_readpage", "mds_connect",
    "mds_disconnect", "mds_get_root", "mds_statfs", "mds_pin", "mds_unpin", "mds_sync",
    "mds_set_info", "mds_quotactl", "mds_getxattr", "mds_setxattr", "mds_get_info",
    "mds_hsm_state_get", "mds_hsm_state_set", "mds_hsm_action", "mds_hsm_progress",
    "mds_hsm_request", "mds_hsm_ct_register", "mds_hsm_ct_unregister", "mds_swap_layouts",
    "ldlm_enqueue", "ldlm_convert", "ldlm_cancel", "ldlm_bl_callback", "ldlm_cp_callback",
    "ldlm_gl_callback", "ldlm_set_info", "obd_ping", "obd_log_cancel", "obd_qc_callback",
    "obd_idx_read", "llog_origin_handle_create", "llog_origin_handle_next_block",
    "llog_origin_handle_read_header", "seq_query", "fld_query", "fld_read", "out_update",
    "lfsck_notify", "lfsck_query",
)  # fmt: skip
_PTLRPC_REQS = frozenset(
    {"req_qdepth", "req_active"}
    | {f"ldlm_{lock}_enqueue" for lock in ("glimpse", "plain", "extent", "flock", "ibits")}
    | {n for n in _PTLRPC_ORDER if n.startswith("mds_reint_")}
)
#: read_ahead_stats reasons: (spelling up to 2.14, spelling from 2.15), in table order.
_RA_REASONS = (
    ("hits", "hits"),
    ("misses", "misses"),
    ("readpage not consecutive", "readpage_not_consecutive"),
    ("miss inside window", "miss_inside_window"),
    ("failed grab_cache_page", "failed_grab_cache_page"),
    ("failed lock match", "failed_lock_match"),
    ("read but discarded", "read_but_discarded"),
    ("zero length file", "zero_length_file"),
    ("zero size window", "zero_size_window"),
    ("read-ahead to EOF", "readahead_to_eof"),
    ("hit max r-a issue", "hit_max_readahead_issue"),
    ("wrong page from grab_cache_page", "wrong_page_from_grab_cache_page"),
    ("failed to reach end", "failed_to_reach_end"),
    ("async readahead", "async_readahead"),
    ("failed to fast read", "failed_to_fast_read"),
    ("mmap range read", "mmap_range_read"),
)
_RA_IN_210 = 13  # 2.10 has the first 13 reasons
_RA_INDEX = {name: i for i, pair in enumerate(_RA_REASONS) for name in pair}


def _ordered(stats: Mapping[str, OpStat], order: Sequence[str]) -> list[tuple[str, OpStat]]:
    rank = {name: i for i, name in enumerate(order)}
    known = sorted((n for n in stats if n in rank), key=rank.__getitem__)
    return [(n, stats[n]) for n in known] + [(n, s) for n, s in stats.items() if n not in rank]


def format_llite_stats(fs: LustreFsState, profile: LustreProfile, time_s: float, start_s: float) -> str:
    """``llite.<instance>.stats``.

    The release decides each line's form, whatever the state's OpStat says: on 2.10 file
    operations are counts only (``[regs]``), ``read_bytes``/``write_bytes`` carry byte
    min/max/sum; from 2.12 operations carry ``[usecs]`` min/max/sum/sumsq. Counters a
    release does not have are left out; counters fmdiag does not know are printed as the
    release prints its default kind.
    """
    out = [stats_header(profile, time_s, start_s)]
    if not profile.llite_latency:
        for name, st in _ordered(fs.llite, _LLITE_210):
            if st.count == 0 or name in _LLITE_NOT_IN_210:
                continue
            if name in ("read_bytes", "write_bytes"):
                out.append(stat_line(name, st, "bytes", True, False))
            elif name in ("brw_read", "brw_write"):
                out.append(stat_line(name, st, "pages", True, False))
            else:
                out.append(stat_line(name, st, "regs", False, False))
        return "".join(out)
    for name, st in _ordered(fs.llite, _LLITE_214):
        if st.count == 0:
            continue
        if name in ("read_bytes", "write_bytes"):
            out.append(stat_line(name, st, "bytes", True, True))
        elif name in ("ioctl", "getxattr_hits", "dirty_pages_hits", "dirty_pages_misses"):
            out.append(stat_line(name, st, "reqs", False, False))
        elif name == "opencount":
            out.append(stat_line(name, st, "reqs", True, True))
        else:
            out.append(stat_line(name, st, "usecs", True, True))
    return "".join(out)


def format_ptlrpc_stats(
    stats: Mapping[str, OpStat], profile: LustreProfile, time_s: float, start_s: float
) -> str:
    """``osc.<instance>.stats`` / ``mdc.<instance>.stats``: the import's ptlrpc counters.

    Every counter carries min/max/sum/sumsq; the unit follows the counter (``req_active``
    in reqs, ``read_bytes`` in bytes, RPC opcodes in usec, "usecs" from 2.12).
    """
    out = [stats_header(profile, time_s, start_s)]
    for name, st in _ordered(stats, _PTLRPC_ORDER):
        if st.count == 0:
            continue
        if name in ("read_bytes", "write_bytes"):
            unit = "bytes"
        elif name in _PTLRPC_REQS:
            unit = "reqs"
        elif name == "req_timeout":
            unit = profile.sec
        elif name == "reqbuf_avail":
            unit = "bufs"
        else:
            unit = profile.usec
        out.append(stat_line(name, st, unit, True, True))
    return "".join(out)


def format_read_ahead_stats(
    reasons: Mapping[str, int], profile: LustreProfile, time_s: float, start_s: float
) -> str:
    """``llite.<instance>.read_ahead_stats``: an lprocfs stats file of page counts.

    State keys may use either spelling; the release decides which one is printed.
    """
    out = [stats_header(profile, time_s, start_s)]
    known: list[tuple[int, int]] = []
    unknown: list[tuple[str, int]] = []
    for name, count in reasons.items():
        idx = _RA_INDEX.get(name)
        if idx is None:
            unknown.append((name, count))
        elif profile.layout == "debugfs" or idx < _RA_IN_210:
            known.append((idx, count))
    for idx, count in sorted(known):
        if count > 0:
            name = _RA_REASONS[idx][1 if profile.ra_underscores else 0]
            out.append(f"{name:<25} {count} samples [pages]\n")
    for name, count in unknown:
        if count > 0:
            out.append(f"{name:<25} {count} samples [pages]\n")
    return "".join(out)


def tally_log2(value: int) -> int:
    """The histogram row ``lprocfs_oh_tally_log2`` puts ``value`` in: ceil(log2 value)."""
    row = 0
    while (1 << row) < value and row < OBD_HIST_MAX - 1:
        row += 1
    return row


def pages_histogram(pages_per_rpc: Mapping[int, int]) -> list[int]:
    hist = [0] * OBD_HIST_MAX
    for pages, count in pages_per_rpc.items():
        hist[tally_log2(pages)] += count
    return hist


def _pct(a: int, b: int) -> int:
    return a * 100 // b if b else 0


def _hist_section(title: str, read: Sequence[int], write: Sequence[int], label: Any, first: int) -> str:
    """One read|write histogram as ``osc_rpc_stats_seq_show`` prints it."""
    out = ["\n\t\t\tread\t\t\twrite\n", f"{title:<22}rpcs   % cum % |       rpcs   % cum %\n"]
    read_tot, write_tot = sum(read), sum(write)
    read_cum = write_cum = 0
    for i in range(first, OBD_HIST_MAX):
        r, w = read[i], write[i]
        read_cum += r
        write_cum += w
        out.append(
            f"{label(i)}:\t\t{r:10d} {_pct(r, read_tot):3d} {_pct(read_cum, read_tot):3d}   | "
            f"{w:10d} {_pct(w, write_tot):3d} {_pct(write_cum, write_tot):3d}\n"
        )
        if read_cum == read_tot and write_cum == write_tot:
            break
    return "".join(out)


def _rpc_header(profile: LustreProfile, time_s: float, start_s: float, *, space_padded: bool = False) -> str:
    """The rpc_stats time line. Before 2.15 the mdc's modify histogram printed the
    nanoseconds with ``%9lu`` (space-padded: ``1700000000. 25000000``), the osc's with ``%09lu``.
    """
    if profile.elapsed_header:
        return stats_header(profile, time_s, start_s, colon=True)
    s, ns = _ns(time_s)
    frac = f"{ns:9d}" if space_padded else f"{ns:09d}"
    return f"snapshot_time:         {s}.{frac} (secs.nsecs)\n"


def _rw_rpc_sections(target: LustreTargetState, hist: RpcHistory, profile: LustreProfile) -> str:
    out = [
        f"read RPCs in flight:  {target.read_rpcs_in_flight}\n",
        f"write RPCs in flight: {target.write_rpcs_in_flight}\n",
        f"pending write pages:  {target.pending_write_pages}\n",
        f"pending read pages:   {target.pending_read_pages}\n",
        _hist_section(
            "pages per rpc",
            pages_histogram(target.read_pages_per_rpc),
            pages_histogram(target.write_pages_per_rpc),
            lambda i: 1 << i,
            0,
        ),
        _hist_section("rpcs in flight", hist.rif_read, hist.rif_write, lambda i: i, profile.rif_first_row),
        _hist_section("offset", hist.off_read, hist.off_write, lambda i: 0 if i == 0 else 1 << (i - 1), 0),
    ]
    return "".join(out)


def format_osc_rpc_stats(
    target: LustreTargetState, hist: RpcHistory, profile: LustreProfile, time_s: float, start_s: float
) -> str:
    """``osc.<instance>.rpc_stats``: in-flight/pending gauges and three histograms."""
    return _rpc_header(profile, time_s, start_s) + _rw_rpc_sections(target, hist, profile)


def format_mdc_rpc_stats(
    target: LustreTargetState, hist: RpcHistory, profile: LustreProfile, time_s: float, start_s: float
) -> str:
    """``mdc.<instance>.rpc_stats``: the modify-RPC histogram, then (2.11+) the osc-like part."""
    out = [_rpc_header(profile, time_s, start_s, space_padded=True), "modify_RPCs_in_flight:  0\n"]
    out.append("\n\t\t\tmodify\nrpcs in flight        rpcs   % cum %\n")
    tot = sum(hist.modify)
    cum = 0
    for i in range(OBD_HIST_MAX):
        n = hist.modify[i]
        cum += n
        out.append(f"{i}:\t\t{n:10d} {_pct(n, tot):3d} {_pct(cum, tot):3d}\n")
        if cum == tot:
            break
    if profile.mdc_rw_sections:
        out.append("\n")
        out.append(_rw_rpc_sections(target, hist, profile))
    return "".join(out)


def _spread(total: int, buckets: Sequence[int]) -> list[int]:
    """``total`` split over ``buckets`` (one share each, remainder to the first ones)."""
    out = [0] * OBD_HIST_MAX
    if total <= 0 or not buckets:
        return out
    base, rem = divmod(total, len(buckets))
    for j, b in enumerate(buckets):
        out[b] += base + (1 if j < rem else 0)
    return out


def _modify_total(target: LustreTargetState) -> int:
    return sum(st.count for name, st in target.stats.items() if name.startswith(("mds_reint", "mds_close")))


def advance_rpc_history(
    prev: RpcHistory | None, target: LustreTargetState, profile: LustreProfile
) -> RpcHistory:
    """The histograms after the RPCs sent since ``prev`` (``None``: a first look, no history)."""
    h = RpcHistory() if prev is None else RpcHistory.from_json(prev.to_json())
    read_pages = pages_histogram(target.read_pages_per_rpc)
    write_pages = pages_histogram(target.write_pages_per_rpc)
    totals = [sum(read_pages), sum(write_pages), _modify_total(target)]
    if any(now < before for now, before in zip(totals, h.totals, strict=True)):
        h = RpcHistory()  # counters went backwards: the client remounted, history restarts
    deltas = [now - before for now, before in zip(totals, h.totals, strict=True)]
    h.totals = totals
    for delta, pages, in_flight, rif, off in (
        (deltas[0], read_pages, target.read_rpcs_in_flight, h.rif_read, h.off_read),
        (deltas[1], write_pages, target.write_rpcs_in_flight, h.rif_write, h.off_write),
    ):
        if delta <= 0:
            continue
        rif[min(max(in_flight, 1), OBD_HIST_MAX - 1)] += delta
        size = 1 << max(range(OBD_HIST_MAX), key=lambda i: (pages[i], -i))  # dominant RPC size
        spread = _spread(delta, [tally_log2(m * size + 1) for m in range(64)])  # page offset + 1
        for i, n in enumerate(spread):
            off[i] += n
    if deltas[2] > 0:
        h.modify[1] += deltas[2]
    return h


def instance_names(fs: LustreFsState) -> dict[str, list[tuple[str, LustreTargetState | None]]]:
    """Client device instances of a mount, by kind: llite, osc (one per OST), mdc (per MDT)."""
    return {
        "llite": [(f"{fs.fsname}-{fs.sbid}", None)],
        "osc": [(f"{fs.fsname}-OST{t.index:04x}-osc-{fs.sbid}", t) for t in fs.osts],
        "mdc": [(f"{fs.fsname}-MDT{t.index:04x}-mdc-{fs.sbid}", t) for t in fs.mdts],
    }


#: Tunables written for every instance (configuration, not measurement: typical defaults).
LUSTRE_TUNABLES: dict[str, dict[str, int]] = {
    "llite": {"max_read_ahead_mb": 64, "max_read_ahead_per_file_mb": 64, "max_read_ahead_whole_mb": 2},
    "osc": {"max_rpcs_in_flight": 8, "max_dirty_mb": 2000, "max_pages_per_rpc": 256, "active": 1},
    "mdc": {"max_rpcs_in_flight": 8, "max_mod_rpcs_in_flight": 7, "max_pages_per_rpc": 256, "active": 1},
}
#: 2.12+ keeps these tunables in /proc (seq files), the rest moved to /sys/fs/lustre.
_PROC_TUNABLES_DEBUGFS_ERA = frozenset({"max_pages_per_rpc"})


@dataclass(frozen=True)
class LustreParam:
    """One Lustre parameter: its ``lctl`` name, its file relative to the root, and its text."""

    name: str
    path: str
    text: str


def lustre_params(
    fs: LustreFsState,
    time_s: float,
    *,
    start_s: float,
    history: Mapping[str, RpcHistory] | None = None,
    layout: str | None = None,
) -> list[LustreParam]:
    """Every parameter a mount exposes, with the file each lives in for its release."""
    profile = lustre_profile(layout or fs.version)
    proc, debug, sysfs = "proc/fs/lustre", "sys/kernel/debug/lustre", "sys/fs/lustre"
    stats_base = proc if profile.layout == "proc" else debug
    hist = history or {}
    out: list[LustreParam] = []
    for kind, insts in instance_names(fs).items():
        for inst, target in insts:

            def add(param: str, text: str, base: str, *, _kind: str = kind, _inst: str = inst) -> None:
                out.append(LustreParam(f"{_kind}.{_inst}.{param}", f"{base}/{_kind}/{_inst}/{param}", text))

            if target is None:
                add("stats", format_llite_stats(fs, profile, time_s, start_s), stats_base)
                add(
                    "read_ahead_stats",
                    format_read_ahead_stats(fs.read_ahead, profile, time_s, start_s),
                    stats_base,
                )
            else:
                add("stats", format_ptlrpc_stats(target.stats, profile, time_s, start_s), stats_base)
                h = hist.get(f"{kind}/{inst}") or advance_rpc_history(None, target, profile)
                fmt = format_osc_rpc_stats if kind == "osc" else format_mdc_rpc_stats
                add("rpc_stats", fmt(target, h, profile, time_s, start_s), proc)
            for name, value in LUSTRE_TUNABLES[kind].items():
                in_proc = profile.layout == "proc" or name in _PROC_TUNABLES_DEBUGFS_ERA
                add(name, f"{value}\n", proc if in_proc else sysfs)
    return out


def _global_params(profile: LustreProfile) -> list[LustreParam]:
    if profile.layout == "proc":
        version = f"lustre: {profile.release}\nkernel: patchless_client\nbuild:  {profile.release}\n"
        return [
            LustreParam("version", "proc/fs/lustre/version", version),
            LustreParam("health_check", "proc/fs/lustre/health_check", "healthy\n"),
        ]
    return [
        LustreParam("version", "sys/fs/lustre/version", f"{profile.release}\n"),
        LustreParam("health_check", "sys/fs/lustre/health_check", "healthy\n"),
    ]


def lctl_get_param(
    states: Sequence[LustreFsState],
    pattern: str,
    *,
    time_s: float | None = None,
    root: Path | None = None,
    show_name: bool = True,
) -> str:
    """What ``lctl get_param <pattern>`` prints for these mounts (``-n`` when not ``show_name``).

    A multi-line value gets a ``name=`` line of its own, a one-line value follows the ``=``,
    and parameters come in name order, as lctl's glob returns them. ``pattern`` globs each
    dot-separated component (``osc.*.rpc_stats``, ``llite.lustrefs-*.stats``). With ``root``,
    rpc_stats histograms match those :func:`render_node` accumulated there; without, they
    hold only what this one snapshot shows. Raises LookupError, with lctl's message, when
    nothing matches.
    """
    now = time.time() if time_s is None else time_s
    history = History.load(root) if root is not None else History()
    start = float(history.boot_time_s) + 60.0 if history.boot_time_s is not None else now - 3600.0
    params: dict[str, str] = {}
    for fs in states:
        for p in lustre_params(fs, now, start_s=start, history=history.rpc):
            params[p.name] = p.text
        for p in _global_params(lustre_profile(fs.version)):
            params.setdefault(p.name, p.text)
    want = pattern.replace("/", ".").split(".")
    out = []
    for name in sorted(params):
        parts = name.split(".")
        if len(parts) != len(want) or not all(
            fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want, strict=True)
        ):
            continue
        text = params[name]
        if not show_name:
            out.append(text)
        elif "\n" in text.rstrip("\n"):
            out.append(f"{name}=\n{text}")
        else:
            out.append(f"{name}={text}")
    if not out:
        raise LookupError(f"error: get_param: param_path '{pattern}': No such file or directory")
    return "".join(out)


def _render_lustre(
    tree: _Tree,
    filesystems: Sequence[LustreFsState],
    time_s: float,
    start_s: float,
    history: History,
    layout: str | None,
) -> None:
    files: dict[str, str] = {}
    new_rpc: dict[str, RpcHistory] = {}
    for fs in filesystems:
        profile = lustre_profile(layout or fs.version)
        for kind, insts in instance_names(fs).items():
            for inst, target in insts:
                if target is not None:
                    key = f"{kind}/{inst}"
                    new_rpc[key] = advance_rpc_history(history.rpc.get(key), target, profile)
        for p in lustre_params(fs, time_s, start_s=start_s, history=new_rpc, layout=layout):
            files[p.path] = p.text
        for p in _global_params(profile):
            files.setdefault(p.path, p.text)
    history.rpc = new_rpc
    # Group files by instance directory: each directory appears and disappears whole.
    by_dir: dict[Path, dict[str, str | Link]] = {}
    singles: dict[Path, str] = {}
    for rel, text in files.items():
        parts = Path(rel).parts
        if len(parts) >= 6 and parts[-3] in ("llite", "osc", "mdc"):
            by_dir.setdefault(tree.root / Path(*parts[:-1]), {})[parts[-1]] = text
        else:
            singles[tree.root / rel] = text
    bases = ("proc/fs/lustre", "sys/kernel/debug/lustre", "sys/fs/lustre")
    for base in bases:
        for kind in ("llite", "osc", "mdc"):
            kind_dir = tree.root / base / kind
            tree.prune(kind_dir, [d.name for d in by_dir if d.parent == kind_dir])
    for directory, spec in by_dir.items():
        tree.sync_dir(directory, spec)
    for path, text in singles.items():
        tree.write(path, text)
    for base in bases:
        base_dir = tree.root / base
        for name in ("version", "health_check"):
            if base_dir / name not in singles:
                tree.remove(base_dir / name)
        tree.remove_empty_dirs(base_dir)
        if base_dir.is_dir() and not any(base_dir.iterdir()):
            base_dir.rmdir()


# --------------------------------------------------------------------------------------------
# procfs for the host collector (psutil with PROCFS_PATH=<root>/proc)
# --------------------------------------------------------------------------------------------

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


def _boot_time(state: NodeState, history: History, given: float | None) -> int:
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


def _render_procfs(
    tree: _Tree, state: NodeState, history: History, boot_time_s: int, mem_total_bytes: int
) -> None:
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


# --------------------------------------------------------------------------------------------
# The whole node
# --------------------------------------------------------------------------------------------


def render_node(
    state: NodeState,
    root: Path,
    *,
    efa_srd: bool | None = None,
    lustre_layout: str | None = None,
    mellanox: int = 0,
    boot_time_s: float | None = None,
    mem_total_bytes: int = DEFAULT_MEM_TOTAL_BYTES,
) -> None:
    """Write (or bring up to date) the node tree of ``state`` under ``root``.

    ``efa_srd`` forces every EFA device with (True) or without (False) the SRD network
    counters; None keeps each device's ``srd_counters``. ``lustre_layout`` ("2.10", "2.14",
    ...) overrides every filesystem's ``version``. ``mellanox`` adds that many ConnectX
    InfiniBand devices (vendor 0x15b3) next to the EFA devices. ``boot_time_s`` fixes the
    kernel boot time; by default it is chosen at the first render of a root (consistent
    with the CPU time and process start times) and kept for later renders.
    Call it again with the next snapshot to advance a live tree; one writer per root.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tree = _Tree(root)
    tree.clean_staging()
    history = History.load(root)
    boot = _boot_time(state, history, boot_time_s)
    history.boot_time_s = boot

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
    _render_rdma(tree, rdma)
    _render_lustre(tree, state.lustre, state.time_s, float(boot) + 60.0, history, lustre_layout)
    _render_procfs(tree, state, history, boot, mem_total_bytes)
    doc = gpustate.GpuStateDoc(time_s=state.time_s, gpus=list(state.gpus), hostname=state.hostname)
    tree.write(root / gpustate.RELATIVE_PATH, gpustate.dumps(doc))  # staged: no temp file in nvml/
    history.save(tree)
    tree.clean_staging()
