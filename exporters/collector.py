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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from prometheus_client.core import Metric

log = logging.getLogger("fmdiag.exporter")


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


@dataclass
class CollectorContext:
    """What a collector gets at construction: source roots, its options, the shared error sink."""

    paths: Paths = field(default_factory=Paths)
    #: ``--collector.<name>.<option>`` values, keyed by option name.
    options: dict[str, str] = field(default_factory=dict)
    errors: ErrorReporter = field(default_factory=ErrorReporter)
    hostname: str = ""


class Collector(ABC):
    """A source of metric families, read fresh on every scrape.

    ``collect`` must not raise for bad input (report it through ``self.ctx.errors``); an
    exception that does escape marks the collector failed for that scrape only.
    """

    name: ClassVar[str]
    default_enabled: ClassVar[bool] = True
    #: ``--collector.<name>.<option>`` flags this collector accepts, with their help text.
    option_help: ClassVar[dict[str, str]] = {}

    def __init__(self, ctx: CollectorContext) -> None:
        self.ctx = ctx

    def report(self, where: str | Path, error: object) -> None:
        self.ctx.errors.report(self.name, where, error)

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
