"""benchmarks/analyze_scale.py refuses a --dump it cannot measure instead of reporting "met".

Run as the user runs it (a subprocess), so the exit status and the message are what a person
at the terminal sees; the refusal comes before any pool or simulator starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "analyze_scale.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_missing_dump_directory_fails_with_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dump"
    done = _run("--dump", str(missing), "--skip-full")
    assert done.returncode != 0
    assert f"--dump {missing}: no such directory; nothing was measured" in done.stderr
    assert "met" not in done.stdout


def test_a_directory_without_step_records_fails_too(tmp_path: Path) -> None:
    (tmp_path / "steps").mkdir()
    (tmp_path / "metrics").mkdir()
    done = _run("--dump", str(tmp_path), "--skip-full")
    assert done.returncode != 0
    assert "no step records in it" in done.stderr
    assert "met" not in done.stdout


def test_a_file_given_as_the_dump_fails(tmp_path: Path) -> None:
    file = tmp_path / "dump.tar"
    file.write_bytes(b"")
    done = _run("--dump", str(file), "--skip-full")
    assert done.returncode != 0
    assert "not a directory" in done.stderr


def test_a_real_dump_is_measured(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    subprocess.run(
        [sys.executable, "-m", "fmdiag", "simulate", "--scenario", "straggler-thermal", "--nodes", "1",
         "--steps", "20", "--efa-devices", "1", "--out", str(dump)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    done = _run("--dump", str(dump), "--skip-full", "--detail")
    assert done.returncode == 0, done.stderr
    assert "160 records from 8 files" in done.stdout
    assert "step records: load + breakdown" in done.stdout
