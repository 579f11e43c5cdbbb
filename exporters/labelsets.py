"""Label dicts kept from one scrape to the next, one per distinct label set.

Why: the exposition keeps each series' text (name and labels) between scrapes, keyed by the
labels dict object (:class:`fmdiag.exporters.exposition.SeriesTexts`), so a collector that
hands out the same dict for the same label set each scrape has its series re-rendered as
values only. Building a dict per sample also costs more than looking one up.

The dicts are content-addressed (the key is the label values, the names are fixed per
:class:`LabelSets`), so a dict always says exactly what was asked for. They are shared by every
sample and scrape that uses them: never change one. Only the sets used in the last two scrapes
are kept (:meth:`LabelSets.end_scrape` ages them), so a removed device's labels go away.
"""

from __future__ import annotations

from collections.abc import Sequence


class LabelSets:
    """Interned label dicts with these label names, in this order (the exposition's order)."""

    #: A collector that never calls end_scrape must not grow without bound.
    LIMIT = 100_000

    __slots__ = ("_current", "_groups", "_groups_before", "_previous", "names")

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._current: dict[tuple[str, ...], dict[str, str]] = {}
        self._previous: dict[tuple[str, ...], dict[str, str]] = {}
        #: Ready-made sequences of these dicts (a histogram's buckets), kept the same way.
        self._groups: dict[tuple[object, ...], tuple[dict[str, str], ...]] = {}
        self._groups_before: dict[tuple[object, ...], tuple[dict[str, str], ...]] = {}

    def get(self, values: tuple[str, ...]) -> dict[str, str]:
        """The dict ``{names[i]: values[i]}``, the same object as last scrape's when there was one."""
        labels = self._current.get(values)
        if labels is None:
            labels = self._previous.get(values)
            if labels is None:
                if len(values) != len(self.names):
                    raise ValueError(f"{len(values)} label values for the names {self.names}")
                labels = dict(zip(self.names, values, strict=True))
            if len(self._current) >= self.LIMIT:
                self._current.clear()
            self._current[values] = labels
        return labels

    def group(self, key: tuple[object, ...]) -> tuple[dict[str, str], ...] | None:
        """The sequence of label dicts kept under ``key`` (in this scrape or the last), or None."""
        found = self._groups.get(key)
        if found is None:
            found = self._groups_before.get(key)
            if found is not None:
                self._groups[key] = found
        return found

    def keep_group(
        self, key: tuple[object, ...], dicts: Sequence[dict[str, str]]
    ) -> tuple[dict[str, str], ...]:
        """Keep a sequence of dicts (a histogram's buckets, from :meth:`get`) under ``key``."""
        group = tuple(dicts)
        if len(self._groups) >= self.LIMIT:
            self._groups.clear()
        self._groups[key] = group
        return group

    def end_scrape(self) -> None:
        """Forget the sets not used in the scrape that just ended."""
        self._previous, self._current = self._current, {}
        self._groups_before, self._groups = self._groups, {}

    def __len__(self) -> int:
        return len(self._current.keys() | self._previous.keys())
