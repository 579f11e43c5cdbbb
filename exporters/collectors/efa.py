"""AWS EFA devices from sysfs: every hw_counter the driver exposes, port state and identity.

Reads ``<sysfs>/class/infiniband/*`` whose PCI vendor is Amazon (``device/vendor`` 0x1d0f), so
Mellanox HCAs and soft-RoCE devices on the same node are left to node_exporter. Counters
come from ``hw_counters/`` (EFA has no ``counters/``, which is why node_exporter shows nothing
for EFA). Every counter file present is exported: known ones under their catalog names,
newer ones as ``fmdiag_efa_*_other_counter_total{counter=...}``, so a driver upgrade never
hides a counter. A file that cannot be read or parsed is skipped and counted, and the
rest of the device is still exported.

Files are read with raw ``os.open``/``os.read`` relative to directory descriptors: a scrape of
a 32-device node reads ~1,400 small files, and this keeps it cheaper than node_exporter's.
"""

from __future__ import annotations

import os
import re
import resource
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client.core import Metric

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.exporters.collector import Collector, CollectorContext, register
from fmdiag.exporters.families import Families
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


_O_FILE = os.O_RDONLY | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_open = os.open
_read = os.read
_close = os.close
_pread = os.pread


def _read_at(dir_fd: int, name: str) -> bytes:
    fd = _open(name, _O_FILE, dir_fd=dir_fd)
    try:
        data = _read(fd, _MAX_READ)
    finally:
        _close(fd)
    if len(data) >= _MAX_READ:
        raise ValueError(f"longer than a sysfs attribute ({_MAX_READ} bytes or more)")
    return data


def _open_dir(path: str, dir_fd: int | None = None) -> int:
    return _open(path, _O_DIR, dir_fd=dir_fd)


#: A counter is at most 20 digits and a newline; a longer read is garbage, not a counter.
_COUNTER_READ = 64
#: A directory modified this close to (or after) the moment its files were opened may have
#: changed again within the filesystem's timestamp granularity: its descriptors are not kept.
_RACY_NS = 50_000_000
#: Descriptors left for everything else (sockets, other collectors) below the process limit.
_FD_RESERVE = 512
_FD_MAX = 16384


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


class _Dir:
    __slots__ = ("fds", "names", "sig")

    def __init__(self, sig: tuple[int, int, int, int], names: list[str], fds: list[int] | None) -> None:
        self.sig = sig
        self.names = names
        self.fds = fds


class CounterFiles:
    """Counter directories whose listing and open files are kept from one scrape to the next.

    Every value is still read in every scrape: a sysfs attribute read at offset 0 runs the
    driver's ``show`` again (the kernel's seq_file restarts at position 0), so ``pread`` on a
    kept descriptor returns what a fresh open would, at a third of the syscalls. That is what
    makes reading all ~1,100 counter files of a p5 cheaper than node_exporter reading 680.

    A directory is trusted only while one ``fstat`` shows it unchanged (inode, mtime, ctime,
    size, link count): on sysfs a counter directory never changes during a device's life (a
    re-registered device is a new directory); in a tree whose files are replaced by rename, as
    the simulator does, every replacement changes the directory and its files are reopened.
    Like git's index, a directory modified within 50 ms of the opening is not trusted, since
    timestamps are coarse. Descriptors of directories not seen in a scrape are closed at its
    end, and the total stays within a budget under the process's file limit; beyond it, files
    are opened, read and closed each time as before.
    """

    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        self.open_fds = 0
        self._dirs: dict[tuple[int, int], _Dir] = {}
        self._used: dict[tuple[int, int], _Dir] = {}

    def get(self, cfd: int) -> tuple[list[str], list[int] | None]:
        """The directory's file names and, when they may be kept, a descriptor per name (-1
        where a name could not be opened, e.g. a dangling link)."""
        st = os.fstat(cfd)
        key = (st.st_dev, st.st_ino)
        sig = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_nlink)
        hit = self._dirs.get(key)
        if hit is not None:
            if hit.sig == sig:
                self._used[key] = hit
                return hit.names, hit.fds
            self._close(self._dirs.pop(key))
        opened_at = time.time_ns()
        names = sorted(os.listdir(cfd))
        fds: list[int] | None = None
        if max(st.st_mtime_ns, st.st_ctime_ns) < opened_at - _RACY_NS and (
            self.open_fds + len(names) <= self.budget
        ):
            fds = []
            for name in names:
                try:
                    fds.append(_open(name, _O_FILE, dir_fd=cfd))
                except OSError:
                    fds.append(-1)
            self.open_fds += sum(1 for fd in fds if fd >= 0)
        entry = _Dir(sig, names, fds)
        self._used[key] = entry
        return names, fds

    def forget(self, cfd: int) -> None:
        """Drop a directory whose kept descriptors failed (device going away)."""
        try:
            st = os.fstat(cfd)
        except OSError:
            return
        entry = self._used.pop((st.st_dev, st.st_ino), None)
        self._dirs.pop((st.st_dev, st.st_ino), None)
        if entry is not None:
            self._close(entry)

    def _close(self, entry: _Dir) -> None:
        if entry.fds is None:
            return
        for fd in entry.fds:
            if fd >= 0:
                _close(fd)
                self.open_fds -= 1
        entry.fds = None

    def end_scrape(self) -> None:
        """Close what this scrape did not use (removed devices, replaced directories)."""
        for key, entry in self._dirs.items():
            if self._used.get(key) is not entry:
                self._close(entry)
        self._dirs, self._used = self._used, {}

    def close(self) -> None:
        self._dirs.update(self._used)
        for entry in self._dirs.values():
            self._close(entry)
        self._dirs, self._used = {}, {}


_PORT_LABELS = ("device", "port")
_DEVICE_LABELS = ("device",)
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
        self.files = CounterFiles(min(raise_fd_limit() - _FD_RESERVE, _FD_MAX))

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

    # One device: False when it is not an EFA (other vendor, no PCI device behind it).
    def device(self, path: str, dev: str) -> bool:
        try:
            dfd = _open_dir(path)
        except FileNotFoundError:
            raise _DeviceGoneError from None
        except OSError as exc:
            self.c.report(path, exc)
            return False
        try:
            try:
                vendor = _vendor(_read_at(dfd, "device/vendor"))
            except FileNotFoundError:
                self.check_present(dfd, path)
                return False  # no PCI device behind it (soft-RoCE, rxe): not ours
            except (OSError, ValueError) as exc:
                self.check_present(dfd, path)
                self.c.report(f"{path}/device/vendor", exc)
                return False
            if vendor != AMAZON_VENDOR:
                return False
            link_layer = self.ports(dfd, path, dev)
            self.counters(
                dfd,
                path,
                "hw_counters",
                {"device": dev},
                EFA_DEVICE_COUNTERS,
                "fmdiag_efa_device_other_counter_total",
                _DEVICE_LABELS,
                dfd,
            )
            self.fams.add("fmdiag_efa_info", 1, {
                "device": dev,
                "fw_ver": self.text(dfd, path, "fw_ver"),
                "node_guid": self.text(dfd, path, "node_guid"),
                "pci_address": self.pci_address(dfd, path),
                "numa_node": self.numa(dfd, path),
                "link_layer": link_layer,
            })  # fmt: skip
            return True
        finally:
            _close(dfd)

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

    def text(self, dfd: int, path: str, name: str) -> str:
        try:
            return _label(_read_at(dfd, name))
        except (OSError, ValueError) as exc:
            self.failed(dfd, path, name, exc)
            return ""

    def numa(self, dfd: int, path: str) -> str:
        try:
            return str(_numa(_read_at(dfd, "device/numa_node")))
        except (OSError, ValueError) as exc:
            self.failed(dfd, path, "device/numa_node", exc)
            return ""

    def pci_address(self, dfd: int, path: str) -> str:
        try:
            return _pci(os.readlink("device", dir_fd=dfd))
        except (OSError, ValueError) as exc:  # EINVAL: not a symlink, so no PCI address to read
            self.failed(dfd, path, "device", exc)
            return ""

    def ports(self, dfd: int, path: str, dev: str) -> str:
        """Port state, rate and counters; returns the first port's link layer for the info metric."""
        try:
            portsfd = _open_dir("ports", dfd)
        except OSError as exc:
            self.failed(dfd, path, "ports", exc)
            return ""
        try:
            try:
                ports = sorted(os.listdir(portsfd))
            except OSError as exc:
                self.failed(dfd, path, "ports", exc)
                return ""
            link_layer = ""
            for port in ports:
                if port.isdigit():
                    link_layer = link_layer or self.port(dfd, portsfd, path, dev, port)
            return link_layer
        finally:
            _close(portsfd)

    def port(self, dfd: int, portsfd: int, path: str, dev: str, port: str) -> str:
        where = f"ports/{port}"
        try:
            pfd = _open_dir(port, portsfd)
        except OSError as exc:
            self.failed(dfd, path, where, exc)
            return ""
        try:
            labels = {"device": dev, "port": port}
            for name, metric, parse in (
                ("state", "fmdiag_efa_port_state_id", _state),
                ("phys_state", "fmdiag_efa_port_physical_state_id", _state),
                ("rate", "fmdiag_efa_port_rate_bytes_per_second", _rate),
            ):
                try:
                    value = parse(_read_at(pfd, name))
                except (OSError, ValueError) as exc:
                    self.failed(dfd, path, f"{where}/{name}", exc)
                    continue
                self.adder(metric, _PORT_LABELS)(labels, value)
            link_layer = ""
            try:
                link_layer = _label(_read_at(pfd, "link_layer"))
            except (OSError, ValueError) as exc:
                self.failed(dfd, path, f"{where}/link_layer", exc)
            self.counters(
                pfd, path, f"{where}/hw_counters", labels, EFA_PORT_COUNTERS,
                "fmdiag_efa_port_other_counter_total", _PORT_LABELS, dfd,
            )  # fmt: skip
            return link_layer
        finally:
            _close(pfd)

    def read_counter(self, cfd: int, dev_fd: int, path: str, rel: str, name: str) -> bytes | None:
        try:
            fd = _open(name, _O_FILE, dir_fd=cfd)
            try:
                return _read(fd, _COUNTER_READ)
            finally:
                _close(fd)
        except OSError as exc:
            self.failed(dev_fd, path, f"{rel}/{name}", exc)
            return None

    def counters(
        self,
        base_fd: int,
        path: str,
        rel: str,
        labels: dict[str, str],
        known: dict[str, tuple[str, str]],
        other: str,
        label_names: tuple[str, ...],
        dev_fd: int,
    ) -> None:
        """Every file of one hw_counters directory: the hot loop of a scrape (~1,100 files
        on a p5), so the common case (a short decimal line) is parsed inline.

        amzn-drivers before r1.14.0 (mid-2021) put the admin counters (``submitted_cmds``,
        ``keep_alive_rcvd``, ...) under ``ports/1/hw_counters``: found there they are exported
        under their device metric names with the device label only, so a dashboard reads them
        the same on every driver; a device-level file of the same name then is not read twice.
        """
        try:
            cfd = _open_dir("hw_counters", base_fd)
        except FileNotFoundError:
            self.check_present(dev_fd, path)
            return  # older drivers have no device-level hw_counters
        except OSError as exc:
            self.failed(dev_fd, path, rel, exc)
            return
        try:
            cache = self.c.files
            try:
                files, fds = cache.get(cfd)
            except OSError as exc:
                self.failed(dev_fd, path, rel, exc)
                return
            raws: list[bytes | None] | None = None
            if fds is not None:
                try:
                    raws = [_pread(fd, _COUNTER_READ, 0) if fd >= 0 else None for fd in fds]
                except OSError:
                    cache.forget(cfd)  # a kept file went bad: read this directory the slow way
                    raws = None
                else:
                    for i, raw in enumerate(raws):
                        if raw is None:
                            raws[i] = self.read_counter(cfd, dev_fd, path, rel, files[i])
            if raws is None:
                raws = [self.read_counter(cfd, dev_fd, path, rel, name) for name in files]
            port = "port" in labels
            adders = self.dir_adders.setdefault(label_names, {})
            moved = self.moved.get(labels["device"]) if not port else None
            for name, raw in zip(files, raws, strict=True):
                if raw is None or (moved is not None and name in moved):
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
                            {"device": labels["device"]}, value
                        )
                elif name.isprintable():
                    self.adder(other, (*label_names, "counter"))({**labels, "counter": name}, value)
                else:
                    self.c.report(f"{path}/{rel}/{name!r}", "counter file name is not printable")
        finally:
            _close(cfd)
