"""Lustre client collector: per-mount (llite), per-OST (osc) and per-MDT (mdc) statistics.

Reads, fresh on every scrape, whichever layout the node has at that moment:

* ``proc``: Lustre <= 2.11, ``<procfs>/fs/lustre/{llite,osc,mdc}/<instance>/``;
* ``debugfs``: 2.12+, ``<debugfs>/lustre/{llite,osc,mdc}/<instance>/`` (root only, debugfs
  mounted) plus the files releases leave in /proc (osc ``rpc_stats`` up to 2.16.52; it moves
  to debugfs in 2.16.53, first released in 2.17.0),
  with the mounts also listed under ``<sysfs>/fs/lustre/llite/``;
* ``lctl``: one ``lctl get_param`` run with a fixed argument list (no shell) and a timeout,
  for nodes where only that is allowed.

With ``source=auto`` both file layouts are searched on each scrape and every instance is
read from wherever its files are, so filesystems mounting, unmounting or a client upgrade
between scrapes need no restart. A file that is unreadable or garbled costs that file (or
its bad lines), is counted and logged through :meth:`Collector.report`, and the rest of
the scrape goes on. A file that vanished between listing and reading is a normal unmount
race and is skipped silently. Parsing lives in :mod:`fmdiag.exporters.lustre_formats`.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from fmdiag.exporters.collector import Collector, CollectorContext, register
from fmdiag.exporters.families import Families, HistogramAdd, bucket_labels
from fmdiag.exporters.labelsets import LabelSets
from fmdiag.exporters.lustre_formats import (
    TIME_UNITS,
    Instance,
    LineError,
    StatsFile,
    parse_instance,
    parse_lctl_output,
    parse_read_ahead_stats,
    parse_rpc_stats,
    parse_stats,
)
from fmdiag.exporters.options import choice, duration, optional_text

SOURCES = ("auto", "proc", "debugfs", "lctl")
KINDS = ("llite", "osc", "mdc")
#: The files read per device kind (the same names are the ``lctl get_param`` parameters).
PARAMS: dict[str, tuple[str, ...]] = {
    "llite": ("stats", "read_ahead_stats"),
    "osc": ("stats", "rpc_stats"),
    "mdc": ("stats",),
}
#: The fixed ``lctl`` arguments: one process per scrape reads every parameter we use.
LCTL_ARGS: tuple[str, ...] = (
    "get_param",
    *(f"{kind}.*.{param}" for kind in KINDS for param in PARAMS[kind]),
)
DEFAULT_LCTL_TIMEOUT_S = 5.0
#: A Lustre parameter is a few KiB; anything past this is not one and is not read further.
MAX_FILE_BYTES = 1 << 20
#: Pages-per-RPC buckets always exposed (1..1024 pages = 4 KiB..4 MiB RPCs with 4 KiB
#: pages), so the series set does not change as larger RPCs start; larger rows extend it.
_FIXED_PAGE_BOUNDS = tuple(1 << i for i in range(11))
_FIXED_SET = frozenset(_FIXED_PAGE_BOUNDS)
_GONE = (errno.ENOENT, errno.ENODEV, errno.ESTALE)
_LCTL_NO_MATCH = ("No such file or directory", "not found")


@dataclass
class _Target:
    """One client device found this scrape, and the raw text of each of its parameters."""

    inst: Instance
    layout: str
    #: parameter -> (where it came from, for error reports; its text)
    texts: dict[str, tuple[str, str]] = field(default_factory=dict)


def _read_text(path: str) -> str:
    """The text of a proc/debugfs file (its size is 0 there, so read to EOF, bounded).

    Opened non-blocking and checked to be a regular file, so a FIFO or device planted in
    the tree cannot hang the scrape; a directory raises IsADirectoryError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES} bytes; not a Lustre parameter")
    finally:
        os.close(fd)
    # A bad byte becomes U+FFFD, which no parser accepts: it costs its line, not the file.
    return b"".join(chunks).decode("utf-8", errors="replace")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


SOURCE = choice(
    "source",
    SOURCES,
    "auto",
    "Where to read Lustre client stats: auto (the /proc layout of <= 2.10, else 2.12+ debugfs, "
    "chosen per scrape), proc, debugfs, or lctl (run lctl get_param).",
)
LCTL_PATH = optional_text(
    "lctl-path",
    "lctl executable for source=lctl.",
    metavar="PATH",
    default_text="lctl on PATH, else /usr/sbin/lctl",
)
LCTL_TIMEOUT = duration(
    "lctl-timeout",
    DEFAULT_LCTL_TIMEOUT_S,
    "How long a hanging lctl may run before it is killed; keep it below the scrape deadline.",
    at_most=600,
)


@register
class LustreCollector(Collector):
    """Lustre client stats per filesystem, OST and MDT: /proc (<= 2.10), debugfs (2.12+) or lctl."""

    name = "lustre"
    options = (SOURCE, LCTL_PATH, LCTL_TIMEOUT)

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.source = self.option(SOURCE)
        self.lctl_timeout_s = self.option(LCTL_TIMEOUT)
        self.lctl_path = self.option(LCTL_PATH) or shutil.which("lctl") or "/usr/sbin/lctl"
        #: Label dicts by label names, kept between scrapes (see fmdiag.exporters.labelsets).
        self._label_sets: dict[tuple[str, ...], LabelSets] = {}

    def source_problem(self) -> str | None:
        # A node without Lustre has a procfs without fs/lustre (healthy, 0 filesystems); a
        # root that is not there at all is a wrong --path.* (a bad hostPath mount).
        paths = self.ctx.paths
        if self.source == "lctl":
            if not os.access(self.lctl_path, os.X_OK):
                return f"lctl not found or not executable at {self.lctl_path} (--collector.lustre.lctl-path)"
            return None
        if not os.path.isdir(paths.procfs) and not self._debugfs_has_lustre():
            return (
                f"{paths.procfs} is not a directory: is procfs mounted there (--path.procfs, --path.rootfs)?"
            )
        if self.source == "debugfs" and not os.path.isdir(paths.debugfs):
            return f"{paths.debugfs} is not a directory: is debugfs mounted there (--path.debugfs)?"
        return None

    def _debugfs_has_lustre(self) -> bool:
        """2.12+ keeps its client stats in debugfs: with those there, a missing procfs costs
        only the files left in /proc (osc ``rpc_stats``), so the collector still runs."""
        return self.source in ("auto", "debugfs") and os.path.isdir(
            os.path.join(self.ctx.paths.debugfs, "lustre")
        )

    # -- the scrape ---------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        try:
            return self._collect()
        finally:
            for sets in self._label_sets.values():
                sets.end_scrape()

    def _collect(self) -> list[Metric]:
        fams = self.families()
        out = _Emission(fams, self._label_sets)
        if not os.path.isdir(self.ctx.paths.procfs) and self._debugfs_has_lustre():
            # Reached only with Lustre data in debugfs (see source_problem): serve it, and say
            # every scrape that what 2.12+ leaves in /proc is missing.
            self.report(
                self.ctx.paths.procfs,
                "is not a directory: the files Lustre 2.12+ leaves in /proc (osc rpc_stats) are not "
                "read, debugfs data is still served; is procfs mounted there (--path.procfs, --path.rootfs)?",
            )
        try:
            targets = self._targets_from_lctl() if self.source == "lctl" else self._targets_from_files()
        except Exception as exc:  # a bug must cost this scrape's Lustre metrics, not the scrape
            self.report("lustre collector", f"internal error, nothing collected: {exc!r}")
            return []
        if targets is not None:
            mounts = 0
            for target in targets:
                mounts += target.inst.kind == "llite"
                try:
                    self._emit(out, target)
                except Exception as exc:  # a bug in one device's handling must not cost the rest
                    self.report(target.inst.name, f"internal error, device skipped: {exc!r}")
            fams.add("fmdiag_lustre_filesystems", mounts)
        return list(fams)

    # -- files (proc / debugfs) ---------------------------------------------------------------
    def _roots(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(layout, root) pairs: those whose device directories are listed, and those each
        device's files are looked up in, in order.

        2.12+ moved most files to debugfs but left some in /proc (osc ``rpc_stats`` stays there
        through 2.16.52 and moves to debugfs in 2.16.53/2.17.0), so the 2.12+ layout looks in both.
        """
        paths = self.ctx.paths
        debugfs = ("debugfs", os.path.join(paths.debugfs, "lustre"))
        proc = ("proc", os.path.join(paths.procfs, "fs", "lustre"))
        if self.source == "proc":
            return [proc], [proc]
        if self.source == "debugfs":
            return [debugfs], [debugfs, proc]
        return [debugfs, proc], [debugfs, proc]

    def _list_names(self, base: str, failures: list[str]) -> list[str]:
        """The subdirectories of ``base``; a missing ``base`` is simply empty."""
        found: list[str] = []
        try:
            with os.scandir(base) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir():
                            found.append(entry.name)
                    except OSError:
                        continue  # vanished while listing
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            failures.append(f"{base}: {_why(exc)}")
        return found

    def _targets_from_files(self) -> list[_Target]:
        failures: list[str] = []
        listed, lookup = self._roots()
        found: dict[tuple[str, str], _Target] = {}
        for kind in KINDS:
            for layout, root in listed:
                for name in self._list_names(os.path.join(root, kind), failures):
                    if (kind, name) in found:
                        continue
                    inst = parse_instance(kind, name)
                    if inst is not None:  # other entries (e.g. server-side devices) are not ours
                        found[(kind, name)] = _Target(inst, layout)
        for target in found.values():
            kind, name = target.inst.kind, target.inst.name
            self._read_target(target, [(lay, os.path.join(root, kind, name)) for lay, root in lookup])
        targets = list(found.values())
        if self.source != "proc":
            targets += self._sysfs_only_mounts(found, failures)
        return targets

    def _read_target(self, target: _Target, dirs: Sequence[tuple[str, str]]) -> None:
        for param in PARAMS[target.inst.kind]:
            for layout, directory in dirs:
                path = os.path.join(directory, param)
                try:
                    text = _read_text(path)
                except OSError as exc:
                    if exc.errno in _GONE:
                        continue  # not in this layout, or unmounted since the listing
                    self.report(path, f"unreadable: {_why(exc)}")
                    break
                target.texts[param] = (path, text)
                if param == "stats":
                    target.layout = layout
                break

    def _sysfs_only_mounts(self, found: dict[tuple[str, str], _Target], failures: list[str]) -> list[_Target]:
        """Mounts that 2.12+ lists in sysfs but whose stats were not found (debugfs missing
        or not readable): shown with layout "sysfs" and reported, so a mount is never
        silently invisible. Nothing is reported on nodes without Lustre."""
        sysfs_llite = os.path.join(self.ctx.paths.sysfs, "fs", "lustre", "llite")
        out: list[_Target] = []
        for name in self._list_names(sysfs_llite, []):
            inst = parse_instance("llite", name)
            if inst is None or ("llite", name) in found:
                continue
            stats = os.path.join(self.ctx.paths.debugfs, "lustre", "llite", name, "stats")
            why = "; ".join(failures) if failures else "no such file"
            self.report(
                stats,
                f"mounted (listed in {sysfs_llite}) but its stats are not readable ({why}): "
                "mount debugfs and run the exporter as root, or use --collector.lustre.source=lctl",
            )
            out.append(_Target(inst, "sysfs"))
        return out

    # -- lctl ---------------------------------------------------------------------------------
    def _run_lctl(self) -> str | None:
        """lctl's stdout, or None (reported) when it could not be run or did not finish."""
        argv = [self.lctl_path, *LCTL_ARGS]
        where = " ".join(argv[:2])
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, so a timeout kills all of it
                env={**os.environ, "LC_ALL": "C"},
            )
        except OSError as exc:
            self.report(self.lctl_path, f"cannot run lctl: {_why(exc)}")
            return None
        try:
            out, err = proc.communicate(timeout=self.lctl_timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.communicate(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass  # a descendant left the group and holds the pipe; do not wait for it
            self.report(where, f"no answer within {self.lctl_timeout_s:g} s; killed")
            return None
        stderr = err.decode("utf-8", errors="replace")
        if proc.returncode != 0:
            # lctl exits non-zero when a pattern matches nothing (no mdc, nothing mounted):
            # normal. Anything else it says is worth a report; what it printed is still used.
            other = [
                line
                for line in stderr.splitlines()
                if line.strip() and not any(s in line for s in _LCTL_NO_MATCH)
            ]
            if other or (not out and not stderr.strip()):
                detail = other[0] if other else "no output"
                self.report(where, f"exit status {proc.returncode}: {detail}")
                if not out.strip():
                    return None  # it failed and said nothing usable: the mounts are unknown
        return out.decode("utf-8", errors="replace")

    def _targets_from_lctl(self) -> list[_Target] | None:
        text = self._run_lctl()
        if text is None:
            return None
        parsed = parse_lctl_output(text)
        self._report_lines("lctl get_param output", parsed.errors)
        targets: dict[tuple[str, str], _Target] = {}
        for p in parsed.params:
            if p.param not in PARAMS.get(p.kind, ()):
                continue
            inst = parse_instance(p.kind, p.instance)
            if inst is None:
                continue
            target = targets.setdefault((p.kind, p.instance), _Target(inst, "lctl"))
            where = f"lctl get_param {p.kind}.{p.instance}.{p.param}"
            if p.param in target.texts:
                self.report(where, "printed twice; the first copy was used")
                continue
            target.texts[p.param] = (where, p.text)
        return list(targets.values())

    # -- emission -----------------------------------------------------------------------------
    def _report_lines(self, where: str, errors: Sequence[LineError]) -> None:
        """One report per file: its first bad line, and how many more there were."""
        if errors:
            more = f" (and {len(errors) - 1} more bad lines)" if len(errors) > 1 else ""
            self.report(where, f"skipped {errors[0]}{more}")

    def _emit(self, out: _Emission, target: _Target) -> None:
        inst = target.inst
        kind = inst.kind
        names = _BASE_LABELS[kind]
        values = (inst.fs, inst.mount_id) if kind == "llite" else (inst.fs, inst.mount_id, inst.target)
        labels = out.labels(names, values)
        if kind == "llite":
            out.add("fmdiag_lustre_client_info", (*names, "layout"), (*values, target.layout), 1)
        if "stats" in target.texts:
            where, text = target.texts["stats"]
            stats = parse_stats(text)
            self._report_lines(where, stats.errors)
            _emit_stats(out, kind, names, values, labels, stats)
        if "read_ahead_stats" in target.texts:
            where, text = target.texts["read_ahead_stats"]
            ra = parse_read_ahead_stats(text)
            self._report_lines(where, ra.errors)
            events = dict(ra.events)
            for reason, family in (("hits", "hits_total"), ("misses", "misses_total")):
                # Lustre omits zero counters, so a clean file without the line means 0; a
                # file with bad lines might have lost it, so then nothing is claimed.
                value = events.pop(reason, None if ra.errors else 0)
                if value is not None:
                    out.add_to(f"fmdiag_lustre_llite_read_ahead_{family}", names, labels, value)
            reason_names = (*names, "reason")
            for reason, value in events.items():
                out.add("fmdiag_lustre_llite_read_ahead_events_total", reason_names, (*values, reason), value)
            if ra.pages is not None:
                out.add_to("fmdiag_lustre_llite_read_ahead_pages_total", names, labels, ra.pages)
        if "rpc_stats" in target.texts:
            where, text = target.texts["rpc_stats"]
            rpc = parse_rpc_stats(text)
            self._report_lines(where, rpc.errors)
            direction_names = (*names, "direction")
            for direction, value in rpc.in_flight.items():
                out.add("fmdiag_lustre_osc_rpcs_in_flight", direction_names, (*values, direction), value)
            for direction, value in rpc.pending_pages.items():
                out.add("fmdiag_lustre_osc_pending_pages", direction_names, (*values, direction), value)
            for direction, rows in rpc.pages_per_rpc.items():
                bounds, cumulative, count = _page_histogram(rows)
                # no _sum: a row says "at most N pages", not how many
                out.histogram(
                    "fmdiag_lustre_osc_pages_per_rpc", direction_names, (*values, direction), bounds,
                    cumulative, count,
                )  # fmt: skip


#: The labels every series of a device kind starts with, in exposition order.
_BASE_LABELS: dict[str, tuple[str, ...]] = {
    "llite": ("fs", "mount_id"),
    "osc": ("fs", "mount_id", "ost"),
    "mdc": ("fs", "mount_id", "mdt"),
}
#: Per kind: the stats family names (operations, latency sum/max/min, read/write bytes).
_STATS_NAMES = {
    kind: tuple(
        f"fmdiag_lustre_{kind}_{what}"
        for what in (
            "operations_total",
            "operation_latency_seconds_total",
            "operation_latency_max_seconds",
            "operation_latency_min_seconds",
            "read_bytes_total",
            "write_bytes_total",
        )
    )
    for kind in KINDS
}


class _Emission:
    """One scrape's families, with the collector's label dicts kept between scrapes.

    Samples go through :meth:`Families.adder` (checked against the catalog once per family)
    with label dicts from :class:`LabelSets`, so a node's ~1,600 Lustre samples cost a lookup
    and an append each, and the exposition re-renders only their values. Families are created
    at their first sample, in the same order as ``Families.add`` would.
    """

    def __init__(self, fams: Families, sets: dict[tuple[str, ...], LabelSets]) -> None:
        self.fams = fams
        self.sets = sets
        self.adders: dict[str, Callable[[dict[str, str], float], None]] = {}
        self.histograms: dict[str, HistogramAdd] = {}

    def labels(self, names: tuple[str, ...], values: tuple[str, ...]) -> dict[str, str]:
        sets = self.sets.get(names)
        if sets is None:
            sets = self.sets[names] = LabelSets(names)
        return sets.get(values)

    def add_to(self, name: str, names: tuple[str, ...], labels: dict[str, str], value: float) -> None:
        add = self.adders.get(name)
        if add is None:
            add = self.adders[name] = self.fams.adder(name, names)
        add(labels, value)

    def add(self, name: str, names: tuple[str, ...], values: tuple[str, ...], value: float) -> None:
        self.add_to(name, names, self.labels(names, values), value)

    def histogram(
        self,
        name: str,
        names: tuple[str, ...],
        values: tuple[str, ...],
        bounds: tuple[int, ...],
        cumulative: Sequence[float],
        count: int,
    ) -> None:
        add = self.histograms.get(name)
        if add is None:
            add = self.histograms[name] = self.fams.histogram_adder(name, names)
        buckets_key = (*names, "le")
        sets = self.sets.get(buckets_key)
        if sets is None:
            sets = self.sets[buckets_key] = LabelSets(buckets_key)
        buckets = sets.group((values, bounds))
        if buckets is None:
            le = _LE.get(bounds) or _le_texts(bounds)
            buckets = sets.keep_group((values, bounds), [sets.get((*values, text)) for text in le])
        add(self.labels(names, values), buckets, cumulative, count, None)


_LE: dict[tuple[int, ...], tuple[str, ...]] = {}


def _le_texts(bounds: tuple[int, ...]) -> tuple[str, ...]:
    """The ``le`` values of these bounds, +Inf last, spelt as ``bucket_labels`` spells them."""
    texts = tuple(lab["le"] for lab in bucket_labels({}, bounds))
    if len(_LE) < 1024:
        _LE[bounds] = texts
    return texts


def _emit_stats(
    out: _Emission,
    kind: str,
    names: tuple[str, ...],
    values: tuple[str, ...],
    labels: dict[str, str],
    stats: StatsFile,
) -> None:
    ops, latency_total, latency_max, latency_min, read_bytes, write_bytes = _STATS_NAMES[kind]
    op_names = (*names, "operation")
    op_sets = out.sets.get(op_names)
    if op_sets is None:
        op_sets = out.sets[op_names] = LabelSets(op_names)
    for line in stats.lines.values():
        if kind == "llite" and line.name == "openclosetime":
            # The gap between a close and the next open of a file, not an operation's
            # latency: summed with the latencies it would dwarf them all.
            out.add_to("fmdiag_lustre_llite_close_to_open_total", names, labels, line.count)
            per_second = TIME_UNITS.get(line.unit)
            if line.sum is not None and per_second is not None:
                out.add_to(
                    "fmdiag_lustre_llite_close_to_open_seconds_total", names, labels, line.sum / per_second
                )
            continue
        op = op_sets.get((*values, line.name))
        out.add_to(ops, op_names, op, line.count)
        if line.sum is None or line.max is None:
            continue
        per_second = TIME_UNITS.get(line.unit)
        if per_second is not None:
            out.add_to(latency_total, op_names, op, line.sum / per_second)
            out.add_to(latency_max, op_names, op, line.max / per_second)
            if line.min is not None:
                out.add_to(latency_min, op_names, op, line.min / per_second)
        elif line.name == "read_bytes":
            out.add_to(read_bytes, names, labels, line.sum)
        elif line.name == "write_bytes":
            out.add_to(write_bytes, names, labels, line.sum)


def _page_histogram(rows: Sequence[tuple[int, int]]) -> tuple[tuple[int, ...], list[int], int]:
    """:func:`pages_per_rpc_buckets` as bounds, cumulative counts and total (fast when, as
    always on a real client, every row is one of the fixed bounds)."""
    if all(label in _FIXED_SET for label, _ in rows):
        by_label = dict(rows)
        cumulative: list[int] = []
        running = 0
        for bound in _FIXED_PAGE_BOUNDS:
            running += by_label.get(bound, 0)
            cumulative.append(running)
        return _FIXED_PAGE_BOUNDS, cumulative, running
    buckets, total = pages_per_rpc_buckets(rows)
    return tuple(int(b) for b, _ in buckets), [int(c) for _, c in buckets], total


def pages_per_rpc_buckets(rows: Sequence[tuple[int, int]]) -> tuple[list[tuple[float, float]], int]:
    """Cumulative (le, count) buckets and the total from rpc_stats rows (label, RPCs).

    A row labelled N holds the RPCs of more than the previous label and at most N pages
    (``lprocfs_oh_tally_log2``), so ``le = N`` is exact. Bounds are the fixed 1..1024 set
    plus any larger row, so the series set is stable across scrapes.
    """
    total = sum(n for _, n in rows)
    bounds = sorted(set(_FIXED_PAGE_BOUNDS) | {label for label, _ in rows})
    buckets: list[tuple[float, float]] = []
    cum = 0
    i = 0
    for bound in bounds:
        while i < len(rows) and rows[i][0] <= bound:
            cum += rows[i][1]
            i += 1
        buckets.append((float(bound), float(cum)))
    return buckets, total
