"""The terminal report as a person reads it: one line first, notes under their phase, the width."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from analyze.helpers import SAMPLES

from fmdiag.analyzers import pipeline
from fmdiag.analyzers.reports import report_text


def _render(dump: Path, columns: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    return report_text.render(pipeline.run(dump, pipeline.Options(workers=1))).splitlines()


def test_opens_with_a_one_line_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _render(SAMPLES / "straggler-thermal", 200, monkeypatch)
    assert lines[1].startswith("verdict: straggler (node node-001, rank 4, gpu 0) costs")
    lines = _render(SAMPLES / "healthy", 200, monkeypatch)
    assert lines[1].startswith("verdict: compute on ")


def test_undecided_notes_sit_under_their_phase_with_their_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "k"
    shutil.copytree(SAMPLES / "straggler-thermal" / "kineto", dump / "kineto")
    lines = _render(dump, 200, monkeypatch)
    phase = next(i for i, x in enumerate(lines) if x.split()[:2][1:] == ["compute"])
    notes = [x for x in lines if x.lstrip().startswith("undecided")]
    assert notes and all(x.startswith("    undecided (step") for x in notes)
    assert lines.index(notes[0]) > phase


@pytest.mark.parametrize("columns", [80, 140])
def test_the_width_follows_the_terminal_and_names_are_never_split(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _render(SAMPLES / "network-node", columns, monkeypatch)
    text = "\n".join(lines)
    wrapped = [x for x in lines if " " in x.strip()]
    assert max(len(x) for x in wrapped) <= columns
    if columns > 100:
        assert max(len(x) for x in wrapped) > 80  # the room is used
    assert "node-\n" not in text and "rdmap-\n" not in text
