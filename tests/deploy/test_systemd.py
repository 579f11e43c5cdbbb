"""The systemd unit, its drop-in, env file and tmpfiles entry, checked with systemd's own tools.

Needs `systemd-analyze` and `systemd-tmpfiles` (Debian package `systemd`); systemd need not
be running.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import exporter_proc

from fmdiag import steprecord, steptrace

from .conftest import SYSTEMD, parse_with_real_cli

UNIT = "fmdiag-exporter.service"
DROPIN = Path(f"{UNIT}.d") / "lustre-debugfs.conf"
INSTALLED_BINARY = "/usr/local/bin/fmdiag"
MAX_EXPOSURE = 2.5


def fmdiag_binary() -> str:
    """An fmdiag executable that exists here, standing in for /usr/local/bin/fmdiag."""
    found = Path(sys.executable).parent / "fmdiag"
    if not found.exists():
        which = shutil.which("fmdiag")
        assert which is not None, "fmdiag console script not installed (pip install -e .)"
        found = Path(which)
    return str(found)


def unit_dir(tmp_path: Path, *, dropin: bool = False, extra: str = "") -> Path:
    """The unit (ExecStart pointed at a binary that exists) in a directory of its own."""
    d = tmp_path / ("with-dropin" if dropin else "plain")
    d.mkdir()
    text = (SYSTEMD / UNIT).read_text()
    assert INSTALLED_BINARY in text
    text = text.replace(INSTALLED_BINARY, fmdiag_binary())
    if extra:
        text = text.replace("[Service]\n", f"[Service]\n{extra}\n", 1)
    (d / UNIT).write_text(text)
    if dropin:
        (d / DROPIN).parent.mkdir()
        shutil.copy(SYSTEMD / DROPIN, d / DROPIN)
    return d


def verify(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", UNIT], cwd=directory, capture_output=True, text=True, timeout=60
    )


def exposure(directory: Path) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", UNIT],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m is not None, out.stdout + out.stderr
    return float(m[1])


def unit_problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr lines about the unit: unknown keys and bad values are only warnings."""
    return [ln for ln in result.stderr.splitlines() if UNIT in ln or "Unknown" in ln or "nvalid" in ln]


@pytest.mark.parametrize("dropin", [False, True], ids=["unit", "unit+lustre-debugfs"])
def test_unit_verifies_without_warnings(tmp_path: Path, dropin: bool) -> None:
    result = verify(unit_dir(tmp_path, dropin=dropin))
    assert result.returncode == 0, result.stderr
    assert unit_problems(result) == []


def test_verify_would_catch_an_unknown_key(tmp_path: Path) -> None:
    result = verify(unit_dir(tmp_path, extra="ProtectEverything=yes"))
    assert any("ProtectEverything" in ln for ln in unit_problems(result)), result.stderr


@pytest.mark.parametrize("dropin", [False, True], ids=["unit", "unit+lustre-debugfs"])
def test_security_exposure_stays_low(tmp_path: Path, dropin: bool) -> None:
    assert exposure(unit_dir(tmp_path, dropin=dropin)) <= MAX_EXPOSURE


def test_the_exposure_check_can_fail(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / UNIT).write_text(f"[Service]\nExecStart={fmdiag_binary()} exporter\n")
    assert exposure(bare) > MAX_EXPOSURE


def _env_args() -> list[str]:
    text = (SYSTEMD / "fmdiag-exporter.env").read_text()
    m = re.search(r'^FMDIAG_EXPORTER_ARGS="([^"]*)"$', text, re.M)
    assert m is not None
    # systemd splits an unbraced $VAR on whitespace: no value may contain a space.
    return m[1].split()


def test_unit_reads_the_env_file_and_binds_the_spool() -> None:
    unit = (SYSTEMD / UNIT).read_text()
    assert "EnvironmentFile=-/etc/default/fmdiag-exporter" in unit
    assert re.search(r"^ExecStart=/usr/local/bin/fmdiag exporter \$FMDIAG_EXPORTER_ARGS$", unit, re.M)
    assert f"BindReadOnlyPaths=-{steprecord.DEFAULT_SPOOL_DIR}" in unit
    params = parse_with_real_cli(_env_args())
    assert params["opt__steps__spool_dir"] == steprecord.DEFAULT_SPOOL_DIR


def test_env_file_flags_start_a_working_exporter(tmp_path: Path) -> None:
    spool = tmp_path / "steps"
    with steptrace.StepTracer(spool, job="unit-test", rank=0, node="n") as tracer, tracer.step():
        pass
    args = [a for a in _env_args() if not a.startswith("--web.listen-address=")]
    args = [
        f"--collector.steps.spool-dir={spool}" if a.startswith("--collector.steps.spool-dir=") else a
        for a in args
    ]
    with exporter_proc.ExporterProcess(args) as proc:
        assert requests.get(f"{proc.url}/healthz", timeout=10).status_code == 200
        samples = exporter_proc.samples(requests.get(f"{proc.url}/metrics", timeout=30).text)
    assert exporter_proc.value(samples, "fmdiag_step_last", training_job="unit-test", rank="0") == 0
    assert exporter_proc.value(samples, "fmdiag_exporter_collector_success", collector="host") == 1


def test_tmpfiles_entry_creates_a_sticky_spool(tmp_path: Path) -> None:
    conf = SYSTEMD / "fmdiag-spool.conf"
    subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(conf)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    spool = tmp_path / steprecord.DEFAULT_SPOOL_DIR.lstrip("/")
    mode = spool.stat().st_mode
    assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o1777


def test_the_readme_states_the_exposure_systemd_analyze_prints(tmp_path: Path) -> None:
    readme = (SYSTEMD.parent / "README.md").read_text()
    m = re.search(
        r"`systemd-analyze security` rates it (\d\.\d) \(\"OK\"; (\d\.\d) with the Lustre drop-in", readme
    )
    assert m is not None
    assert float(m[1]) == exposure(unit_dir(tmp_path, dropin=False))
    assert float(m[2]) == exposure(unit_dir(tmp_path, dropin=True))


def test_the_bare_metal_scrape_config_is_valid_for_promtool() -> None:
    # promtool comes with Debian's prometheus, which .ci/run installs: missing, this fails.
    out = subprocess.run(
        ["promtool", "check", "config", str(SYSTEMD / "prometheus-scrape.yml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr
