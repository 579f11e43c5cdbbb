"""Rule groups and their promtool test cases, as plain data that renders to YAML.

Annotation templates may use only ``{{ $labels.<name> }}``: promtool compares expanded
annotations exactly, and this restriction is what lets the expected annotations of every
test case be expanded here without re-implementing Go templates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LABEL_REF = re.compile(r"\{\{ \$labels\.([A-Za-z_][A-Za-z0-9_]*) \}\}")
_ANY_TEMPLATE = re.compile(r"\{\{.*?\}\}")


def expand(template: str, labels: dict[str, str]) -> str:
    """``template`` with each ``{{ $labels.x }}`` replaced; anything else in ``{{ }}`` is refused."""
    for found in _ANY_TEMPLATE.findall(template):
        if not _LABEL_REF.fullmatch(found):
            raise ValueError(f"annotation template {found!r}: only '{{{{ $labels.<name> }}}}' is allowed")
    rest = _LABEL_REF.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise ValueError(f"annotation template {template!r}: unbalanced '{{{{' or '}}}}'")
    return _LABEL_REF.sub(lambda m: labels.get(m[1], ""), template)


@dataclass(frozen=True)
class Series:
    """One promtool input series: a selector with labels and promtool's expanding values."""

    series: str
    values: str


@dataclass(frozen=True)
class Case:
    """One promtool test of one alert: inputs, when to evaluate, and what must fire (none: silent)."""

    name: str
    inputs: tuple[Series, ...]
    eval_time: str
    fires: tuple[dict[str, str], ...] = ()
    interval: str = "1m"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    cases: tuple[Case, ...]
    for_: str = "0s"
    #: Extra static labels (``tier`` for XID alerts, ...).
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.severity in {"critical", "warning", "info"}, self.severity
        fires = [c for c in self.cases if c.fires]
        silent = [c for c in self.cases if not c.fires]
        if not fires or not silent:
            raise ValueError(f"alert {self.name}: needs at least one firing and one silent test case")
        expand(self.summary, {})
        expand(self.description, {})


@dataclass(frozen=True)
class Record:
    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """A rule group; ``file`` names its rule file and its test file."""

    name: str
    file: str
    rules: tuple[Alert | Record, ...]
    #: Rule files (other groups') whose recorded series this group's alerts read.
    needs: tuple[str, ...] = ()
    #: Tests of recorded series (alerts carry their own cases).
    expr_cases: tuple[ExprCase, ...] = ()

    @property
    def alerts(self) -> tuple[Alert, ...]:
        return tuple(r for r in self.rules if isinstance(r, Alert))

    @property
    def records(self) -> tuple[Record, ...]:
        return tuple(r for r in self.rules if isinstance(r, Record))


@dataclass(frozen=True)
class ExprCase:
    """A promtool ``promql_expr_test``: a recorded series' value for given inputs."""

    name: str
    inputs: tuple[Series, ...]
    eval_time: str
    expr: str
    #: (labels as PromQL ``name{...}``, value) of every expected sample.
    samples: tuple[tuple[str, float], ...]
    interval: str = "1m"


def series(name: str, values: str, **labels: str) -> Series:
    """A test input series ``name{labels}`` (label order as given)."""
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return Series(f"{name}{{{inner}}}", values)


def count_drop_cases(metric: str, usual: int, dropped_name: str) -> tuple[Case, Case]:
    """A device count falls one below its usual value for 10 minutes (fires), or stays (silent).

    The "fewer devices than in the last day" alerts (GPUs, EFA devices) share this shape.
    """
    node = {"job": "fmdiag", "cluster": "c1", "instance": "node-1"}
    fired = ({"cluster": "c1", "instance": "node-1"},)
    return (
        Case(dropped_name, (series(metric, f"{usual}x10 {usual - 1}x10", **node),), "18m", fired),
        Case("steady", (series(metric, f"{usual}x20", **node),), "18m"),
    )
