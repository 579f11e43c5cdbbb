"""Paths shared by the analyzer tests (imported as ``analyze.helpers``)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
