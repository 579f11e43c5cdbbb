"""The README's quick start, run as written after its install step (the test session's own
environment is that install): a user's first command must work on the bundled samples, and its
second, ./run-tests, must not reinstall anything in an environment that has it all."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _quick_start() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def test_the_first_command_runs_the_main_job_on_a_sample() -> None:
    blocks = _quick_start()
    assert len(blocks) == 2, "the quick start is two commands: install + main job, then the tests"
    install, _, main_job = blocks[0].partition("pip install -e '.[dev]' && ")
    assert install and main_job.startswith("fmdiag "), blocks[0]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(main_job, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "step records: 640 from 16 files" in run.stdout and "Kineto" in run.stdout
    # what the README promises the report ends with: the verdicts, the culprit, what fixing it gives back
    assert "Verdicts (phases of one class)" in run.stdout
    assert "drain node-001: GPU 0" in run.stdout
    assert "fixing the straggling rank gives back" in run.stdout
    assert max(len(line) for line in run.stdout.splitlines()) <= 80
    assert blocks[1].strip() == "./run-tests"


def _shim(path: Path, marker: Path) -> None:
    path.write_text(f'#!/bin/sh\necho "$0 $*" >> {marker}\nexit 3\n')
    path.chmod(0o755)


def test_the_second_command_runs_the_tests_without_reinstalling(tmp_path: Path) -> None:
    """./run-tests in this (complete) environment: no apt-get, no pip, no download; straight to pytest.
    apt-get and sudo are shims first on PATH, pip a package first on PYTHONPATH (python -m pip finds it
    before the real one), any download goes to a proxy that refuses: each records the call and fails."""
    blocks = _quick_start()
    assert len(blocks) == 2 and blocks[1].strip() == "./run-tests"
    script = REPO / "run-tests"
    assert script.is_file() and os.access(script, os.X_OK), f"{script} is missing or not executable"
    if shutil.which("git") and (REPO / ".git").exists():
        git = subprocess.run(["git", "ls-files", "-s", "run-tests"], cwd=REPO, capture_output=True, text=True)
        staged = git.stdout if git.returncode == 0 else ""  # not yet added, or git refuses this tree
        assert not staged or staged.startswith("100755 "), f"run-tests is not executable in git: {staged}"

    venv = Path(sys.prefix)
    stamp = venv / ".fmdiag-run-tests-stamp"
    assert sys.prefix != sys.base_prefix, "the tests run in a virtual environment (./run-tests makes one)"
    if not stamp.is_file():
        # This environment runs these tests, so it holds fmdiag[dev] from this checkout (installed
        # by the README's first command rather than by ./run-tests): record it as run-tests does,
        # so what is checked below is that a complete environment is not installed again.
        digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
        stamp.write_text(f"{digest} {REPO}\n")
    marker = tmp_path / "calls"
    bin_dir, pip_dir = tmp_path / "bin", tmp_path / "shadow" / "pip"
    bin_dir.mkdir()
    pip_dir.mkdir(parents=True)
    for name in ("apt-get", "sudo"):
        _shim(bin_dir / name, marker)
    (pip_dir / "__init__.py").write_text("")
    (pip_dir / "__main__.py").write_text(
        f"import sys\nwith open({str(marker)!r}, 'a') as f:\n"
        "    f.write('pip ' + ' '.join(sys.argv[1:]) + '\\n')\nsys.exit(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RUN_TESTS_SETUP_ONLY", "PYTHONHOME")}
    env |= {
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": str(pip_dir.parent),
        **{k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
        "no_proxy": "",
        "NO_PROXY": "",
    }
    run = subprocess.run(
        [str(script), "--collect-only", "-q", "-p", "no:cacheprovider", "tests/foundation/test_durations.py"],
        cwd=tmp_path,  # the script works from the repository root wherever it is started
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls = marker.read_text() if marker.exists() else ""
    assert not calls, f"run-tests reinstalled in a complete environment:\n{calls}\n{run.stdout}{run.stderr}"
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"== virtual environment: {venv} (active)" in run.stdout, run.stdout
    assert "== fmdiag[dev]: installed for this pyproject.toml" in run.stdout, run.stdout
    assert "pip install" not in run.stdout, run.stdout
    assert "tests/foundation/test_durations.py::" in run.stdout, run.stdout
