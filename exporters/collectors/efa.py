"""AWS EFA devices from sysfs: every hw_counter the driver exposes, port state and identity.

Reads ``<sysfs>/class/infiniband/*`` whose PCI vendor is Amazon (``device/vendor`` 0x1d0f), so
Mellanox HCAs and soft-RoCE devices on the same node are left to node_exporter. Counters
come from ``hw_counters/`` (EFA has no ``counters/``, which is why node_exporter shows nothing
for EFA). Every counter file present is exported: known ones under their catalog names,
newer ones as ``fmdiag_efa_*_other_counter_total{counter=...}``, so a driver upgrade never
hides a counter. A file that cannot be read or parsed is skipped and counted, and the
rest of the device is still exported.

A scrape of a 32-device node reads ~1,450 small files. Each device's files stay open from one
scrape to the next and are re-read with ``pread``, all of a device in one batch before anything
is parsed (:mod:`fmdiag.exporters.kept_files`, which also says when they are reopened), and the
label dicts stay the same objects (:mod:`fmdiag.exporters.labelsets`), so the exposition formats
only values: this keeps it cheaper than node_exporter's reading half as many.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client.core import Metric

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.exporters.collector import Collector, CollectorContext, register
from fmdiag.exporters.families import Families
from fmdiag.exporters.kept_files import DeviceReader, KeptDevices, StaleError
from fmdiag.exporters.labelsets import LabelSets
from fmdiag.exporters.options import regex

AMAZON_VENDOR = 0x1D0F
U64_MAX = 2**64 - 1
#: sysfs attributes are at most one page; a longer read is not a sysfs attribute.
_MAX_READ = 4096
_PCI_ADDRESS = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(Gb|Mb|Kb|b)/sec\b")
_RATE_SCALE = {"Gb": 1e9, "Mb": 1e6, "Kb": 1e3, "b": 1.0}
_STATE = re.compile(r"^(\d+)(?::\s*(\S.*))?$")


# --- parsers: pure functions from a sysfs attribute's bytes to a value -----------------------
def parse_counter(raw: bytes) -> int:
    """A hw_counter: a decimal unsigned 64-bit integer and a newline."""
    s = raw.strip()
    if not s:
        raise ValueError("empty counter file")
    if not s.isdigit() or len(s) > 20:
        raise ValueError(f"not an unsigned integer: {_show(s)}")
    value = int(s)
    if value > U64_MAX:
        raise ValueError(f"counter {_show(s)} exceeds 64 bits")
    return value


def parse_lifespan_seconds(raw: bytes) -> float:
    """``hw_counters/lifespan`` is in milliseconds (the driver's counter cache period)."""
    return parse_counter(raw) / 1000.0


def parse_state(raw: bytes) -> int:
    """``state`` / ``phys_state``: the kernel prints ``4: ACTIVE`` / ``5: LinkUp``."""
    s = _text(raw)
    m = _STATE.match(s)
    if m is None or len(m.group(1)) > 3:
        raise ValueError(f"not a port state ('<n>: <NAME>'): {_show(raw.strip())}")
    return int(m.group(1))


def parse_rate_bytes(raw: bytes) -> float:
    """``rate``: ``100 Gb/sec (4X EDR)`` or ``100 Gb/sec``, converted to bytes per second."""
    s = _text(raw)
    m = _RATE.match(s)
    if m is None:
        raise ValueError(f"not a port rate ('<n> Gb/sec'): {_show(raw.strip())}")
    return float(m.group(1)) * _RATE_SCALE[m.group(2)] / 8.0


def parse_vendor(raw: bytes) -> int:
    """``device/vendor``: a hex PCI vendor id, ``0x1d0f`` for Amazon."""
    s = _text(raw)
    if not s.lower().startswith("0x") or len(s) > 6:
        raise ValueError(f"not a PCI vendor id ('0x1d0f'): {_show(raw.strip())}")
    try:
        return int(s, 16)
    except ValueError:
        raise ValueError(f"not a PCI vendor id ('0x1d0f'): {_show(raw.strip())}") from None


def parse_numa_node(raw: bytes) -> int:
    """``device/numa_node``: a small integer, ``-1`` when the platform has no NUMA information."""
    s = _text(raw)
    if not re.fullmatch(r"-?\d{1,4}", s):
        raise ValueError(f"not a NUMA node number: {_show(raw.strip())}")
    return int(s)


def parse_label_text(raw: bytes) -> str:
    """``fw_ver``, ``node_guid``, ``link_layer``: one line of printable text."""
    s = _text(raw)
    if not s or len(s) > 256 or not s.isprintable():
        raise ValueError(f"not one line of printable text: {_show(raw.strip())}")
    return s


def parse_pci_address(link_target: str) -> str:
    """The PCI address from the ``device`` symlink (``../../../0000:4f:00.0``)."""
    name = link_target.rstrip("/").rsplit("/", 1)[-1]
    if not _PCI_ADDRESS.match(name):
        raise ValueError(f"device link {link_target!r} does not end in a PCI address")
    return name.lower()


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"not UTF-8 text: {_show(raw)}") from None


def _show(raw: bytes) -> str:
    return repr(raw[:40]) + ("..." if len(raw) > 40 else "")


# --- memoised parsers for the collector -------------------------------------------------------
_T = TypeVar("_T")
_K = TypeVar("_K", bytes, str)
_MEMO_MAX = 4096


def _memo(parse: Callable[[_K], _T]) -> Callable[[_K], _T]:
    """The same pure parser, remembering results: a node's state, rate, identity and link
    texts are the same few strings scrape after scrape, and parsing them (regexes, decoding)
    would otherwise cost more than reading them. Failures are not remembered."""
    cache: dict[_K, _T] = {}

    def parsed(raw: _K) -> _T:
        try:
            return cache[raw]
        except KeyError:
            value = parse(raw)
            if len(cache) >= _MEMO_MAX:
                cache.clear()
            cache[raw] = value
            return value

    return parsed


_state = _memo(parse_state)
_rate = _memo(parse_rate_bytes)
_vendor = _memo(parse_vendor)
_numa = _memo(parse_numa_node)
_label = _memo(parse_label_text)
_pci = _memo(parse_pci_address)
_lifespan = _memo(parse_lifespan_seconds)


# --- reading ---------------------------------------------------------------------------------
class _DeviceGoneError(Exception):
    """The device directory disappeared mid-scrape (hot-unplug, driver unload): not an error."""


#: A counter is at most 20 digits and a newline; a longer read is garbage, not a counter.
_COUNTER_READ = 64
#: Descriptors left for everything else (sockets, other collectors) below the process limit.
_FD_RESERVE = 512
_FD_MAX = 16384


def _attribute(data: bytes) -> bytes:
    if len(data) >= _MAX_READ:
        raise ValueError(f"longer than a sysfs attribute ({_MAX_READ} bytes or more)")
    return data


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (as Go programs such as node_exporter do
    at start-up) and return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


_PORT_LABELS = ("device", "port")
_DEVICE_LABELS = ("device",)
_INFO_LABELS = ("device", "fw_ver", "node_guid", "pci_address", "numa_node", "link_layer")
_PORT_ATTRIBUTES = (
    ("state", "fmdiag_efa_port_state_id", _state),
    ("phys_state", "fmdiag_efa_port_physical_state_id", _state),
    ("rate", "fmdiag_efa_port_rate_bytes_per_second", _rate),
)
_Adder = Callable[[dict[str, str], float], None]


DEVICE_EXCLUDE = regex(
    "device-exclude", "", "Regular expression of EFA device names to skip (matched against the whole name)."
)


@register
class EfaCollector(Collector):
    """AWS EFA devices: every hw_counter, port state and rate, identity (sysfs class/infiniband)."""

    name = "efa"
    options = (DEVICE_EXCLUDE,)

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self._exclude = self.option(DEVICE_EXCLUDE)
        self.files = KeptDevices(min(raise_fd_limit() - _FD_RESERVE, _FD_MAX))
        #: Label dicts by label names, kept between scrapes (see fmdiag.exporters.labelsets).
        self.label_sets: dict[tuple[str, ...], LabelSets] = {
            names: LabelSets(names)
            for names in (
                _DEVICE_LABELS,
                _PORT_LABELS,
                (*_DEVICE_LABELS, "counter"),
                (*_PORT_LABELS, "counter"),
                _INFO_LABELS,
            )
        }

    @property
    def root(self) -> str:
        return os.path.join(self.ctx.paths.sysfs, "class", "infiniband")

    def source_problem(self) -> str | None:
        # No class/infiniband on a sysfs that has class/ is a node without RDMA devices
        # (0 devices, healthy); no class/ at all is sysfs not mounted where we were told.
        sysfs = self.ctx.paths.sysfs
        if not os.path.isdir(os.path.join(sysfs, "class")):
            return f"{sysfs} has no class/ directory: is sysfs mounted there (--path.sysfs, --path.rootfs)?"
        return None

    def collect(self) -> Iterable[Metric]:
        try:
            return _Scrape(self).run()
        finally:
            self.files.end_scrape()
            for sets in self.label_sets.values():
                sets.end_scrape()

    def close(self) -> None:
        self.files.close()


class _Scrape:
    """One scrape's state: the families being built and their sample adders."""

    def __init__(self, collector: EfaCollector) -> None:
        self.c = collector
        self.fams = collector.families()
        self.adders: dict[tuple[str, int], _Adder] = {}
        #: device -> device counters found under ports/<n>/hw_counters (drivers before r1.14.0)
        self.moved: dict[str, set[str]] = {}
        #: per kind of hw_counters directory (by its label names): file name -> adder
        self.dir_adders: dict[tuple[str, ...], dict[str, _Adder]] = {}

    def adder(self, name: str, labels: tuple[str, ...]) -> _Adder:
        key = (name, len(labels))
        add = self.adders.get(key)
        if add is None:
            add = self.adders[key] = self.fams.adder(name, labels)
        return add

    def run(self) -> Families:
        c = self.c
        root = c.root
        names: list[str] = []
        try:
            names = sorted(os.listdir(root))
        except FileNotFoundError:
            pass  # no RDMA devices on this node (or the driver is not loaded)
        except OSError as exc:
            c.report(root, exc)
        devices = 0
        for dev in names:
            if c._exclude is not None and c._exclude.fullmatch(dev):
                continue
            try:
                if self.device(os.path.join(root, dev), dev):
                    devices += 1
            except _DeviceGoneError:
                continue
        self.fams.add("fmdiag_efa_devices", devices)
        return self.fams

    def labels(self, names: tuple[str, ...], values: tuple[str, ...]) -> dict[str, str]:
        return self.c.label_sets[names].get(values)

    # One device: False when it is not an EFA (other vendor, no PCI device behind it).
    def device(self, path: str, dev: str) -> bool:
        """Read the device from kept descriptors when they are still good, else afresh."""
        files = self.c.files
        try:
            reader = files.begin(path)
            if reader.kept is not None:
                try:
                    reader.prefetch(_MAX_READ, _COUNTER_READ)
                except StaleError:
                    reader = files.restart(path)
        except FileNotFoundError:
            raise _DeviceGoneError from None
        except OSError as exc:
            self.c.report(path, exc)
            return False
        ours = False
        try:
            ours = self.read_device(reader, path, dev)
            return ours
        finally:
            files.finish(path, reader, keep=ours)

    def read_device(self, reader: DeviceReader, path: str, dev: str) -> bool:
        dfd = reader.fd
        try:
            vendor = _vendor(_attribute(reader.read("device/vendor", _MAX_READ)))
        except FileNotFoundError:
            self.check_present(dfd, path)
            return False  # no PCI device behind it (soft-RoCE, rxe): not ours
        except (OSError, ValueError) as exc:
            self.check_present(dfd, path)
            self.c.report(f"{path}/device/vendor", exc)
            return False
        if vendor != AMAZON_VENDOR:
            return False
        link_layer = self.ports(reader, path, dev)
        self.counters(
            reader,
            path,
            "hw_counters",
            self.labels(_DEVICE_LABELS, (dev,)),
            EFA_DEVICE_COUNTERS,
            "fmdiag_efa_device_other_counter_total",
            _DEVICE_LABELS,
        )
        info = (
            dev,
            self.text(reader, path, "fw_ver"),
            self.text(reader, path, "node_guid"),
            self.pci_address(reader, path),
            self.numa(reader, path),
            link_layer,
        )
        self.adder("fmdiag_efa_info", _INFO_LABELS)(self.labels(_INFO_LABELS, info), 1)
        return True

    def check_present(self, dfd: int, path: str) -> None:
        """Raise :class:`_DeviceGoneError` when the device directory itself went away."""
        try:
            gone = os.fstat(dfd).st_nlink == 0 or not os.path.isdir(path)
        except OSError:
            gone = True
        if gone:
            raise _DeviceGoneError

    def failed(self, dfd: int, path: str, where: str, exc: BaseException) -> None:
        self.check_present(dfd, path)
        self.c.report(f"{path}/{where}", exc)

    def text(self, reader: DeviceReader, path: str, name: str) -> str:
        try:
            return _label(_attribute(reader.read(name, _MAX_READ)))
        except (OSError, ValueError) as exc:
            self.failed(reader.fd, path, name, exc)
            return ""

    def numa(self, reader: DeviceReader, path: str) -> str:
        try:
            return str(_numa(_attribute(reader.read("device/numa_node", _MAX_READ))))
        except (OSError, ValueError) as exc:
            self.failed(reader.fd, path, "device/numa_node", exc)
            return ""

    def pci_address(self, reader: DeviceReader, path: str) -> str:
        try:
            return _pci(reader.readlink("device"))
        except (OSError, ValueError) as exc:  # EINVAL: not a symlink, so no PCI address to read
            self.failed(reader.fd, path, "device", exc)
            return ""

    def ports(self, reader: DeviceReader, path: str, dev: str) -> str:
        """Port state, rate and counters; returns the first port's link layer for the info metric."""
        try:
            ports = reader.listdir("ports")
        except OSError as exc:
            self.failed(reader.fd, path, "ports", exc)
            return ""
        link_layer = ""
        for port in ports:
            if port.isdigit():
                link_layer = link_layer or self.port(reader, path, dev, port)
        return link_layer

    def port(self, reader: DeviceReader, path: str, dev: str, port: str) -> str:
        where = f"ports/{port}"
        dfd = reader.fd
        try:
            reader.listdir(where)  # the port directory must open, as a whole, before its files
        except OSError as exc:
            self.failed(dfd, path, where, exc)
            return ""
        labels = self.labels(_PORT_LABELS, (dev, port))
        for name, metric, parse in _PORT_ATTRIBUTES:
            try:
                value = parse(_attribute(reader.read(f"{where}/{name}", _MAX_READ)))
            except (OSError, ValueError) as exc:
                self.failed(dfd, path, f"{where}/{name}", exc)
                continue
            self.adder(metric, _PORT_LABELS)(labels, value)
        link_layer = ""
        try:
            link_layer = _label(_attribute(reader.read(f"{where}/link_layer", _MAX_READ)))
        except (OSError, ValueError) as exc:
            self.failed(dfd, path, f"{where}/link_layer", exc)
        self.counters(
            reader, path, f"{where}/hw_counters", labels, EFA_PORT_COUNTERS,
            "fmdiag_efa_port_other_counter_total", _PORT_LABELS,
        )  # fmt: skip
        return link_layer

    def counters(
        self,
        reader: DeviceReader,
        path: str,
        rel: str,
        labels: dict[str, str],
        known: dict[str, tuple[str, str]],
        other: str,
        label_names: tuple[str, ...],
    ) -> None:
        """Every file of one hw_counters directory: the hot loop of a scrape (~1,100 files
        on a p5), so the common case (a short decimal line) is parsed inline.

        amzn-drivers before r1.14.0 (mid-2021) put the admin counters (``submitted_cmds``,
        ``keep_alive_rcvd``, ...) under ``ports/1/hw_counters``: found there they are exported
        under their device metric names with the device label only, so a dashboard reads them
        the same on every driver; a device-level file of the same name then is not read twice.
        """
        dev_fd = reader.fd
        try:
            files, raws = reader.read_group(rel, _COUNTER_READ)
        except FileNotFoundError:
            self.check_present(dev_fd, path)
            return  # older drivers have no device-level hw_counters
        except OSError as exc:
            self.failed(dev_fd, path, rel, exc)
            return
        port = "port" in labels
        adders = self.dir_adders.setdefault(label_names, {})
        moved = self.moved.get(labels["device"]) if not port else None
        counter_names = (*label_names, "counter")
        for name, raw in zip(files, raws, strict=True):
            if isinstance(raw, OSError):
                self.failed(dev_fd, path, f"{rel}/{name}", raw)
                continue
            if moved is not None and name in moved:
                continue
            if name == "lifespan":
                if port:
                    try:
                        span = _lifespan(raw)
                    except ValueError as exc:
                        self.failed(dev_fd, path, f"{rel}/{name}", exc)
                        continue
                    self.adder("fmdiag_efa_hw_counters_lifespan_seconds", _PORT_LABELS)(labels, span)
                continue  # the device-level copy of the port's cache period is not exported
            # Up to 19 digits and a newline cannot exceed 64 bits: no further checks needed.
            if 1 < len(raw) <= 20 and raw[-1] == 10 and raw[:-1].isdigit():
                value = int(raw)
            else:
                try:
                    if len(raw) >= _COUNTER_READ:
                        raise ValueError(f"longer than a counter ({_COUNTER_READ} bytes or more)")
                    value = parse_counter(raw)
                except ValueError as exc:
                    self.failed(dev_fd, path, f"{rel}/{name}", exc)
                    continue
            add = adders.get(name)
            if add is not None:
                add(labels, value)
                continue
            entry = known.get(name)
            if entry is not None:
                add = adders[name] = self.adder(entry[0], label_names)
                add(labels, value)
            elif port and name in EFA_DEVICE_COUNTERS:  # an old driver's admin counter
                seen = self.moved.setdefault(labels["device"], set())
                if name not in seen:  # once per device, should a device ever have two ports
                    seen.add(name)
                    self.adder(EFA_DEVICE_COUNTERS[name][0], _DEVICE_LABELS)(
                        self.labels(_DEVICE_LABELS, (labels["device"],)), value
                    )
            elif name.isprintable():
                self.adder(other, counter_names)(self.labels(counter_names, (*labels.values(), name)), value)
            else:
                self.c.report(f"{path}/{rel}/{name!r}", "counter file name is not printable")
