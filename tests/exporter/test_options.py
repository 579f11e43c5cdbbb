"""Collector options as declarations: one Option gives the flag, its help, its check and its value."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmdiag.exporters import options
from fmdiag.exporters.cli import exporter
from fmdiag.exporters.collector import REGISTRY, Collector, CollectorContext
from fmdiag.exporters.collectors import discover
from fmdiag.exporters.options import OptionError, resolve

DOCS = Path(__file__).resolve().parents[2] / "docs" / "exporter.md"

WINDOW = options.duration("window", 300.0, "How far back.", at_most=3600)
COUNT = options.integer("count", 8, "How many.", minimum=1)
ON = options.switch("on", True, "Whether.")
PATTERN = options.regex("pattern", "a+", "Which.")
MODE = options.choice("mode", ("fast", "slow"), "fast", "How.")
NOTE = options.optional_text("note", "Anything.", default_text="the hostname")
ALL = (WINDOW, COUNT, ON, PATTERN, MODE, NOTE)


def test_defaults_when_nothing_is_given() -> None:
    values = resolve("demo", ALL, {})
    assert values == {
        "window": 300.0,
        "count": 8,
        "on": True,
        "pattern": re.compile("a+"),
        "mode": "fast",
        "note": None,
    }


def test_given_text_is_parsed_to_typed_values() -> None:
    given = {"window": "1m30s", "count": "3", "on": "off", "pattern": "", "mode": "slow", "note": "x"}
    assert resolve("demo", ALL, given) == {
        "window": 90.0,
        "count": 3,
        "on": False,
        "pattern": None,
        "mode": "slow",
        "note": "x",
    }


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"window": "soon"}, "--collector.demo.window='soon': 'soon' is not a duration"),
        ({"window": "2h"}, "--collector.demo.window='2h': expected seconds in (0, 3600], got 7200"),
        ({"count": "0"}, "--collector.demo.count='0': must be at least 1, got 0"),
        ({"count": "1.5"}, "--collector.demo.count='1.5': '1.5' is not an integer"),
        ({"on": "maybe"}, "--collector.demo.on='maybe': expected on or off"),
        ({"pattern": "(("}, "--collector.demo.pattern='((': not a regular expression"),
        ({"mode": "warp"}, "--collector.demo.mode='warp': expected one of fast, slow"),
        ({"colour": "blue"}, "--collector.demo: unknown option(s) colour; known: count, mode, note, on,"),
    ],
)
def test_bad_values_and_unknown_options_name_the_flag(given: dict[str, str], message: str) -> None:
    with pytest.raises(OptionError) as err:
        resolve("demo", ALL, given)
    assert str(err.value).startswith(message)


def test_every_collector_refuses_unknown_options() -> None:
    discover()
    for name, cls in REGISTRY.items():
        with pytest.raises(OptionError, match=f"--collector.{name}: unknown option"):
            cls(CollectorContext(options={"no-such-option": "1"}))


def test_collectors_read_typed_values() -> None:
    class Demo(Collector):
        name = "demo"
        options = ALL

        def collect(self) -> list[object]:  # type: ignore[override]
            return []

    demo = Demo(CollectorContext(options={"count": "5", "on": "no"}))
    assert (demo.option(COUNT), demo.option(ON), demo.option(WINDOW)) == (5, False, 300.0)


def test_help_shows_defaults_as_an_operator_types_them() -> None:
    ctx = click.Context(exporter)
    lines = {}
    for param in exporter.params:
        record = param.get_help_record(ctx)
        if record is not None:
            lines[record[0].split()[0]] = record
    assert lines["--collector.gpu.xid-window"][0] == "--collector.gpu.xid-window DURATION"
    assert lines["--collector.gpu.xid-window"][1].endswith("[default: 5m]")
    assert lines["--collector.steps.stale-after"][1].endswith("[default: 1h]")
    assert lines["--collector.steps.max-ranks"] == (
        "--collector.steps.max-ranks INTEGER",
        "Most (job, rank) pairs exported per node; records of more are counted as dropped.  [default: 64]",
    )
    assert lines["--collector.gpu.events"][0] == "--collector.gpu.events / --no-collector.gpu.events"
    assert lines["--collector.gpu.events"][1].endswith("[default: on]")
    assert lines["--collector.lustre.source"][0] == "--collector.lustre.source [auto|proc|debugfs|lctl]"
    assert lines["--scrape.timeout"][0] == "--scrape.timeout DURATION"


def test_switches_are_flag_pairs_and_values_stay_text() -> None:
    ctx = exporter.make_context("exporter", ["--no-collector.gpu.events", "--collector.gpu.xid-window=2m"])
    assert ctx.params["opt__gpu__events"] is False
    assert ctx.params["opt__gpu__xid_window"] == "2m"  # checked, then parsed by the collector
    with pytest.raises(click.BadParameter, match="'2x' is not a duration"):
        exporter.make_context("exporter", ["--collector.gpu.xid-window=2x"])


def test_docs_list_every_collector_option() -> None:
    discover()
    docs = DOCS.read_text()
    for name, cls in REGISTRY.items():
        for option in cls.options:
            assert f"`{option.flag(name)}`" in docs or f"`{option.flag(name)} /" in docs, option.flag(name)


@given(st.text(max_size=20))
def test_any_text_is_a_value_or_an_option_error(text: str) -> None:
    for option in ALL:
        try:
            option.read("demo", text)
        except OptionError as exc:
            assert str(exc).startswith(f"--collector.demo.{option.name}=")
