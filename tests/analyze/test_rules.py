"""The verdict thresholds are data: one table, checked, documented, and read by the rules."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fmdiag import catalog
from fmdiag.analyzers.diagnosis import metric_use, rules, verdicts

REPO = Path(__file__).resolve().parents[2]
GOOD = 'name = "X_FRACTION"\nvalue = 0.5\ndecides = "network"\nreads = "comm_exposed"\nwhy = "because"\n'


def test_the_doc_is_the_table() -> None:
    doc = (REPO / "docs" / "verdict-rules.md").read_text()
    assert doc.endswith(rules.markdown_table()), "docs/verdict-rules.md is stale: regenerate its table"


def test_every_rule_is_read_by_the_verdicts_under_its_name() -> None:
    for name, rule in rules.table().items():
        assert getattr(verdicts, name) == rule.value
    code = (REPO / "analyzers" / "diagnosis" / "verdicts.py").read_text()
    for name in rules.table():
        # used somewhere beyond its own definition
        assert len(re.findall(rf"\b{name}\b", code)) >= 2, name


def test_the_metrics_a_rule_reads_are_catalogued_and_kept_by_the_reader() -> None:
    read = set()
    for rule in rules.table().values():
        read |= set(re.findall(r"\b((?:DCGM_|fmdiag_)[A-Za-z0-9_]+)", rule.reads))
    assert read, "no metric named in the table: the pattern no longer matches"
    assert read <= metric_use.USED, read - metric_use.USED
    assert [n for n in read if catalog.family_of(n) is None] == []


def test_the_table_ships_with_the_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "rules.toml" in pyproject["tool"]["setuptools"]["package-data"]["fmdiag.analyzers.diagnosis"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]]\n" + GOOD.replace("value = 0.5", 'value = "half"'), "rule X_FRACTION: field 'value'"),
        ("[[rule]]\n" + GOOD.replace("value = 0.5", "value = -1"), "field 'value' must be a number >= 0"),
        ("[[rule]]\n" + GOOD.replace('"network"', '"fabric"'), "rule X_FRACTION: field 'decides'"),
        ("[[rule]]\n" + GOOD.replace('why = "because"\n', ""), "rule 1: field 'why' missing"),
        ("[[rule]]\n" + GOOD.replace('"X_FRACTION"', '"x"'), "rule 1: field 'name' must be"),
        ("[[rule]]\n" + GOOD + 'colour = "red"\n', "rule 1: unknown field 'colour'"),
        ("[[rule]]\n" + GOOD + "[[rule]]\n" + GOOD, "rule X_FRACTION: defined twice"),
        ("[[rule]\n", "t.toml: "),
    ],
)
def test_a_malformed_table_names_the_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(rules.RulesError, match=re.escape(message)):
        rules.parse(text, "t.toml")


def test_a_good_entry_parses() -> None:
    got = rules.parse(
        "[[rule]]\n" + GOOD + "[[rule]]\n" + GOOD.replace("X_", "Y_").replace('"network"', '"io, host"')
    )
    assert list(got) == ["X_FRACTION", "Y_FRACTION"]
    assert got["Y_FRACTION"].decides == "io, host"
