"""Fixtures for EFA collector tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "efa"


@pytest.fixture
def efa_tree(tmp_path: Path) -> Callable[[str], Path]:
    """A writable copy of tests/fixtures/efa/<name>/sys (symlinks kept)."""

    def copy(name: str) -> Path:
        dest = tmp_path / name / "sys"
        shutil.copytree(FIXTURES / name / "sys", dest, symlinks=True)
        return dest

    return copy
