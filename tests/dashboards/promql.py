"""PromQL helpers for the tests: substitute Grafana's template variables, list metric names."""

from __future__ import annotations

import re

import promql_parser

#: Grafana variables as a test substitutes them: every value allowed, Grafana's windows fixed.
_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, **values: str) -> str:
    """``expr`` with ``$__rate_interval`` and friends fixed, ``$var`` set to ``values[var]`` or else
    ``.+`` (every variable is a regex matcher value)."""

    def value(m: re.Match[str]) -> str:
        name = m[1] or m[2] or m[3]
        return values.get(name, _VARIABLES.get(name, ".+"))

    return _VAR.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (by name or by ``__name__="..."``)."""
    names: set[str] = set()

    def visit(node: object, *_: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    assert m.op == promql_parser.MatchOp.Equal, f"regex on __name__ in {expr!r}"
                    names.add(m.value)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names
