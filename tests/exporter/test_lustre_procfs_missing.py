"""Lustre 2.12+ with procfs missing: the debugfs stats are still served and the missing procfs
is reported (counted in parse_errors_total and logged), instead of the whole collector giving up.

Real collector, real scraper, on the checked-in Lustre 2.14 fixture tree with its ``proc/`` left out.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from fmdiag.exporters.collector import CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors.lustre import LustreCollector
from fmdiag.exporters.scrape import Scraper

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lustre" / "v2.14"

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scraper(root: Path, **options: str) -> tuple[Scraper, ErrorReporter]:
    errors = ErrorReporter()
    paths = Paths(sysfs=root / "sys", procfs=root / "proc", debugfs=root / "sys" / "kernel" / "debug")
    collector = LustreCollector(CollectorContext(paths=paths, options=options, errors=errors))
    return Scraper([collector], errors, timeout_s=30), errors


def _series(scraper: Scraper) -> Series:
    out: Series = {}
    for fam in scraper.scrape().families:
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(series: Series, name: str, **labels: str) -> float | None:
    return series.get((name, frozenset(labels.items())))


def _lustre_only(series: Series) -> Series:
    return {k: v for k, v in series.items() if k[0].startswith("fmdiag_lustre_")}


def test_debugfs_data_is_served_and_the_missing_procfs_reported(tmp_path: Path) -> None:
    full = tmp_path / "full"
    shutil.copytree(FIXTURE, full, symlinks=True)
    without_proc = tmp_path / "no-proc"
    shutil.copytree(FIXTURE / "sys", without_proc / "sys", symlinks=True)

    complete = _series(_scraper(full)[0])
    scraper, errors = _scraper(without_proc)
    served = _series(scraper)

    assert _value(served, "fmdiag_exporter_collector_success", collector="lustre") == 1
    assert _value(served, "fmdiag_lustre_filesystems") == 1
    assert errors.count("lustre") == 1
    assert _value(served, "fmdiag_exporter_collector_parse_errors_total", collector="lustre") == 1
    # Everything read from debugfs is there with the same values as on the complete tree; only
    # what 2.14 keeps in /proc (osc rpc_stats: RPCs in flight, pending pages, pages per RPC) is not.
    from_proc = ("fmdiag_lustre_osc_rpcs_in_flight", "fmdiag_lustre_osc_pending_pages",
                 "fmdiag_lustre_osc_pages_per_rpc")  # fmt: skip
    expected = {k: v for k, v in _lustre_only(complete).items() if not k[0].startswith(from_proc)}
    assert any(k[0].startswith(from_proc) for k in complete)  # the fixture has them: the check bites
    assert _lustre_only(served) == expected
    assert any(k[0] == "fmdiag_lustre_osc_operations_total" for k in served)
    assert any(k[0] == "fmdiag_lustre_mdc_operations_total" for k in served)

    # Said again on every scrape, as any other unreadable source is.
    _series(scraper)
    assert errors.count("lustre") == 2


def test_the_missing_procfs_is_logged_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copytree(FIXTURE / "sys", tmp_path / "sys", symlinks=True)
    scraper, _ = _scraper(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fmdiag.exporter"):
        _series(scraper)
    assert f"collector lustre: skipped {tmp_path / 'proc'}: is not a directory" in caplog.text
    assert "no data, reporting success 0" not in caplog.text


def test_without_debugfs_data_a_missing_procfs_still_fails_the_collector(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    scraper, _ = _scraper(tmp_path)
    assert _value(_series(scraper), "fmdiag_exporter_collector_success", collector="lustre") == 0


def test_source_proc_needs_procfs_whatever_debugfs_holds(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "sys", tmp_path / "sys", symlinks=True)
    scraper, _ = _scraper(tmp_path, source="proc")
    served = _series(scraper)
    assert _value(served, "fmdiag_exporter_collector_success", collector="lustre") == 0
    assert not any(k[0].startswith("fmdiag_lustre_") for k in served)
