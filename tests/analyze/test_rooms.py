"""The analyzer's rooms import one way: readers <- frames <- diagnosis <- pipeline <- reports <- cli.

A reader that imported a verdict, or a rule that imported a report, would tie the pipeline's stages
back together; this test reads every module's imports (lazy and type-only ones included) and fails
on any that points up the pipeline.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "analyzers"

#: Room (folder, or top-level module) -> its place in the pipeline; a module may import its own
#: room and the rooms before it.
ORDER = {
    "errors": 0,
    "executors": 0,
    "readers": 1,
    "frames": 2,
    "diagnosis": 3,
    "pipeline": 4,
    "reports": 5,
    "collect": 6,
    "cli": 7,
}


def _room(parts: list[str]) -> str:
    """``["readers", "kineto_reader"]`` -> ``readers``; ``["pipeline"]`` -> ``pipeline``."""
    return parts[0]


def _imports(path: Path) -> list[tuple[int, list[str]]]:
    """(line, dotted path under fmdiag.analyzers split in parts) of every analyzer import."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mod = node.module.split(".")
            if mod[:2] != ["fmdiag", "analyzers"]:
                continue
            out.extend((node.lineno, [*mod[2:], alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                mod = alias.name.split(".")
                if mod[:2] == ["fmdiag", "analyzers"] and len(mod) > 2:
                    out.append((node.lineno, mod[2:]))
    return out


def test_every_module_lives_in_a_known_room() -> None:
    rooms = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.rglob("*.py")}
    assert rooms - {"__init__"} == set(ORDER)


def _upward(root: Path) -> list[str]:
    """Every import in the tree under ``root`` that points up the pipeline."""
    wrong = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        if rel == ("__init__",):
            continue
        mine = ORDER[_room(list(rel))]
        for line, target in _imports(path):
            if ORDER[_room(target)] > mine:
                wrong.append(f"{path.relative_to(root)}:{line} imports {'.'.join(target)}")
    return wrong


def test_imports_point_down_the_pipeline_only() -> None:
    wrong = _upward(ROOT)
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_upward_imports_lazy_or_not(tmp_path: Path) -> None:
    (tmp_path / "readers").mkdir()
    (tmp_path / "readers" / "r.py").write_text(
        "from fmdiag.analyzers.frames import columns\n"
        "def f():\n    from fmdiag.analyzers.diagnosis import verdicts\n"
        "from fmdiag.analyzers import errors\n"
    )
    (tmp_path / "diagnosis").mkdir()
    (tmp_path / "diagnosis" / "v.py").write_text("import fmdiag.analyzers.reports.report_text\n")
    assert _upward(tmp_path) == [
        "diagnosis/v.py:1 imports reports.report_text",
        "readers/r.py:1 imports frames.columns",
        "readers/r.py:3 imports diagnosis.verdicts",
    ]
