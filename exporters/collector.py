"""The one interface every collector implements, and the registry that switches them by name.

Modelled on node_exporter's collectors (one file each, registered by name, toggled with
``--collector.<name>``), minus its weakness: a collector reports an unreadable or garbled
file through :class:`ErrorReporter` and goes on with the rest instead of failing whole.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from prometheus_client.core import Metric

from fmdiag.exporters.families import CatalogChecks, Families
from fmdiag.exporters.options import Option, resolve

log = logging.getLogger("fmdiag.exporter")
T = TypeVar("T")


@dataclass(frozen=True)
class Paths:
    """Where the sources live; containers mount the host under ``rootfs`` and point these at it."""

    sysfs: Path = Path("/sys")
    procfs: Path = Path("/proc")
    debugfs: Path = Path("/sys/kernel/debug")
    rootfs: Path = Path("/")


class ErrorReporter:
    """Counts parse errors per collector and logs them, naming the file, at most once a minute per file.

    A scrape never raises because of one bad file: the collector calls :meth:`report` and
    carries on; the count is exported as ``fmdiag_exporter_collector_parse_errors_total``.
    """

    def __init__(self, log_interval_s: float = 60.0) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._last_logged: dict[tuple[str, str], float] = {}
        self._interval = log_interval_s

    def report(self, collector: str, where: str | Path, error: object) -> None:
        key = (collector, str(where))
        now = time.monotonic()
        with self._lock:
            self._counts[collector] = self._counts.get(collector, 0) + 1
            last = self._last_logged.get(key)
            if last is not None and now - last < self._interval:
                return
            self._last_logged[key] = now
            if len(self._last_logged) > 10_000:  # bound memory when paths churn
                self._last_logged.clear()
        log.warning("collector %s: skipped %s: %s", collector, where, error)

    def count(self, collector: str) -> int:
        with self._lock:
            return self._counts.get(collector, 0)


class SourceUnavailableError(Exception):
    """Raised by ``collect`` when the collector's source as a whole is not there.

    A wrong ``--path.sysfs`` (a bad hostPath mount), NVML that cannot initialise or an absent
    kubelet socket must not look like a healthy node with nothing to report: the scrape marks
    the collector ``fmdiag_exporter_collector_success 0`` and logs ``reason`` once (again only
    when the reason changes, and once when the source comes back), as node_exporter does for
    a collector with no data. ``families`` are still served: what the collector can say
    without its source (``fmdiag_gpu_devices 0``, the last known pod assignments).
    """

    def __init__(self, reason: str, families: Iterable[Metric] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.families = list(families)


#: pid -> GPU label value ("0", or "0,3" for a process on several GPUs), host PID namespace.
GpuProcessProvider = Callable[[], Mapping[int, str]]
#: GPU index -> UUID of the GPUs NVML enumerated in the GPU collector's last scrape.
GpuIdentityProvider = Callable[[], Mapping[int, str]]


@dataclass(frozen=True)
class MigInstance:
    """One MIG device as NVML reports it, with the physical GPU it is carved from.

    The kubelet names a MIG device by its own UUID (device plugin) or by a name built from
    its parent's minor number, GPU instance profile and placement (NVIDIA's DRA driver),
    while every GPU series is keyed by the physical GPU's UUID: this is the link.
    """

    uuid: str  # "MIG-..."
    parent_uuid: str  # "GPU-..."
    parent_index: int
    gpu_instance_id: int
    compute_instance_id: int
    #: The GPU instance profile without NVML's "MIG " prefix ("1g.10gb"); "" when unknown.
    profile: str = ""
    #: nvmlGpuInstanceGetInfo's profile id and placement; None when NVML would not say.
    gi_profile_id: int | None = None
    placement_start: int | None = None
    placement_size: int | None = None


@dataclass(frozen=True)
class GpuInventory:
    """The GPUs and MIG devices of the GPU collector's last scrape, for resolving device ids.

    Immutable: the GPU collector replaces it whole after each scrape, so a reader in another
    collector's thread always sees one consistent scrape.
    """

    #: minor number (``/dev/nvidia<N>``, dcgm-exporter's ``device`` label) -> GPU UUID
    by_minor: Mapping[int, str] = field(default_factory=dict)
    #: MIG UUID -> the MIG device
    migs: Mapping[str, MigInstance] = field(default_factory=dict)
    #: False until the GPU collector's first scrape has finished (NVML is initialised lazily):
    #: a reader then leaves out what it cannot resolve yet rather than export a wrong UUID.
    scraped: bool = False

    def mig_at(self, parent_uuid: str, gi_profile_id: int, start: int, size: int) -> MigInstance | None:
        """The MIG device with this GPU instance profile id and placement on that GPU."""
        for mig in self.migs.values():
            if mig.parent_uuid == parent_uuid and (
                mig.gi_profile_id,
                mig.placement_start,
                mig.placement_size,
            ) == (gi_profile_id, start, size):
                return mig
        return None

    def mig_of_instance(
        self, parent_uuid: str, gpu_instance: int, compute_instance: int
    ) -> MigInstance | None:
        """The MIG device of (GPU instance, compute instance) on that GPU."""
        for mig in self.migs.values():
            if (mig.parent_uuid, mig.gpu_instance_id, mig.compute_instance_id) == (
                parent_uuid,
                gpu_instance,
                compute_instance,
            ):
                return mig
        return None


GpuInventoryProvider = Callable[[], GpuInventory]


class GpuProcesses:
    """Which processes use which GPU: the GPU collector provides it, the host collector reads it.

    One per exporter, handed to every collector through its context rather than kept in a
    module global, so two exporters in one process (tests, benchmarks) never see each
    other's GPUs. ``provider`` is None while no GPU collector runs.
    """

    def __init__(self) -> None:
        self.provider: GpuProcessProvider | None = None
        #: GPU index -> UUID, for collectors that attribute GPUs (slurm) without NVML.
        self.identities: GpuIdentityProvider | None = None
        #: Minor numbers and MIG devices, for the kubernetes collector's MIG and DRA devices.
        self.inventory: GpuInventoryProvider | None = None


@dataclass
class CollectorContext:
    """What a collector gets at construction: source roots, its options, what it shares.

    The CLI builds one per collector; ``errors``, ``nvml``, ``gpu_processes`` and
    ``catalog_checks`` are the same objects in all of them (``dataclasses.replace`` of one
    context keeps them shared), which is how collectors of one exporter reach each other.
    """

    paths: Paths = field(default_factory=Paths)
    #: ``--collector.<name>.<option>`` values as typed, keyed by option name; the collector
    #: parses them with its :attr:`Collector.options` declarations.
    options: Mapping[str, str] = field(default_factory=dict)
    errors: ErrorReporter = field(default_factory=ErrorReporter)
    hostname: str = ""
    #: The NVML implementation: an object with pynvml's ``nvml*`` functions (the driver's,
    #: through the ``pynvml`` module, when None; tests pass the stand-in, ``FakeNvml``). Constants,
    #: structures and exception classes always come from the ``pynvml`` module itself.
    nvml: Any = None
    gpu_processes: GpuProcesses = field(default_factory=GpuProcesses)
    catalog_checks: CatalogChecks = field(default_factory=CatalogChecks)


class Collector(ABC):
    """A source of metric families, read fresh on every scrape.

    ``collect`` must not raise for bad input (report it through ``self.ctx.errors``); an
    exception that does escape marks the collector failed for that scrape only.
    """

    name: ClassVar[str]
    default_enabled: ClassVar[bool] = True
    #: The ``--collector.<name>.<option>`` flags this collector accepts.
    options: ClassVar[tuple[Option[Any], ...]] = ()

    def __init__(self, ctx: CollectorContext) -> None:
        """Parse every option up front: a bad or unknown one is an OptionError naming the flag."""
        self.ctx = ctx
        self._option_values = resolve(self.name, self.options, ctx.options)

    def option(self, declared: Option[T]) -> T:
        """The parsed value of one of :attr:`options` (its default when the flag was not given)."""
        value: T = self._option_values[declared.name]
        return value

    def families(self) -> Families:
        """An empty scrape result, checked against the catalog with the exporter's shared memo."""
        return Families(self.ctx.catalog_checks)

    def report(self, where: str | Path, error: object) -> None:
        self.ctx.errors.report(self.name, where, error)

    def source_problem(self) -> str | None:
        """Why this collector's source root is not there (a wrong ``--path.*``), or None.

        Checked before every collect and once at start-up, so a bad mount is logged when the
        exporter starts and the collector reports success 0 instead of looking like a node
        without the hardware. Only the root is checked: a node without EFA devices or Lustre
        mounts has a valid root and is healthy with nothing to report.
        """
        return None

    @abstractmethod
    def collect(self) -> Iterable[Metric]:
        """Metric families for one scrape, built with :class:`fmdiag.exporters.families.Families`."""

    def close(self) -> None:  # noqa: B027 - optional hook, most collectors hold nothing
        """Release background resources (threads, handles) at shutdown."""


REGISTRY: dict[str, type[Collector]] = {}


def register(cls: type[Collector]) -> type[Collector]:
    """Class decorator: make a collector selectable as ``--collector.<cls.name>``."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two collectors named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls
