"""`fmdiag analyze` end to end: every sample, partial dumps, bad input, --keep-going, the summary."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from analyze import kineto_builder as kb
from analyze.helpers import FIXTURES, SAMPLES
from click.testing import CliRunner

from fmdiag import dumpformat

# The subcommand itself, not the root group: invoking the shared group object caches its help
# option (with -h) and would change what tests/foundation/test_cli_startup.py compares.
from fmdiag.analyzers.cli import analyze
from fmdiag.analyzers.reports import report_json

SAMPLE_DIRS = sorted(p for p in SAMPLES.iterdir() if p.is_dir())


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(analyze, list(args))
    return r.exit_code, r.output


def analyze_json(*args: str) -> dict[str, object]:
    code, out = run(*args, "--json", "--workers", "1")
    assert code == 0, out
    doc: dict[str, object] = json.loads(out)
    return doc


@pytest.mark.parametrize("sample", SAMPLE_DIRS, ids=lambda p: p.name)
def test_every_sample(sample: Path) -> None:
    doc = analyze_json(str(sample))
    assert doc["format"] == report_json.FORMAT and doc["version"] == report_json.VERSION
    truth = dumpformat.read_truth(sample / "truth.json")
    cov = doc["coverage"]["steps"]  # type: ignore[index]
    assert cov["first_step"] == 0 and cov["last_step"] == truth["steps_total"] - 1
    assert cov["missing_ranks"] == [] and cov["bad_lines"] == []
    per_rank = doc["steps"]["per_rank"]  # type: ignore[index]
    assert len(per_rank["rows"]) == cov["records"]
    assert per_rank["columns"][:4] == ["step", "rank", "node", "duration_s"]
    kineto = dumpformat.DumpLayout(sample).kineto_files()
    assert len(doc["inputs"]["kineto"]["files"]) == len(kineto)  # type: ignore[index]
    if kineto:
        assert doc["kineto"]["per_rank"]["rows"]  # type: ignore[index]
    subsystems = doc["inputs"]["metrics"]["subsystems"]  # type: ignore[index]
    assert set(subsystems) == set(dumpformat.DumpLayout(sample).metrics_files())
    verdict_list = doc["verdicts"]
    assert isinstance(verdict_list, list)
    assert [v["step"] for v in verdict_list] == list(range(truth["steps_total"]))
    for v in verdict_list:
        assert v["class"] in dumpformat.VERDICT_CLASSES and 0.0 <= v["confidence"] <= 1.0
        assert {"evidence", "culprit", "recommendation", "undecided"} <= set(v)


def _partial_dump(tmp_path: Path, keep: str) -> Path:
    src = next(p for p in SAMPLE_DIRS if (p / "kineto").is_dir())
    out = tmp_path / keep
    shutil.copytree(src / keep, out / keep)
    return out


def test_kineto_only_steps_only_metrics_only(tmp_path: Path) -> None:
    k = analyze_json(str(_partial_dump(tmp_path, "kineto")))
    assert k["steps"]["per_rank"]["rows"] == [] and k["kineto"]["per_rank"]["rows"]  # type: ignore[index]
    s = analyze_json(str(_partial_dump(tmp_path, "steps")))
    assert s["steps"]["per_rank"]["rows"] and s["kineto"]["per_rank"]["rows"] == []  # type: ignore[index]
    m = analyze_json(str(_partial_dump(tmp_path, "metrics")))
    assert m["inputs"]["metrics"]["source"] == "dump" and m["steps"]["per_rank"]["rows"] == []  # type: ignore[index]
    # metrics alone have no step to judge: no verdicts, and the terminal report says why
    assert m["verdicts"] == [] and m["attribution"] is None
    code, out = run(str(tmp_path / "metrics"))
    assert code == 0 and "Verdicts: none (no step records or Kineto traces" in out
    # the other two each get verdicts
    assert k["verdicts"] and s["verdicts"] and s["attribution"]["run"]["duration_s"] > 0  # type: ignore[index]


def test_empty_dump_and_missing_dump(tmp_path: Path) -> None:
    code, out = run(str(tmp_path))
    assert code == 1 and "nothing to analyse" in out
    code, out = run(str(tmp_path / "nope"))
    assert code == 1 and "not a directory" in out


def _kineto_dump(tmp_path: Path) -> Path:
    dump = tmp_path / "d"
    (dump / "kineto").mkdir(parents=True)
    shutil.copy(FIXTURES / "handmade_new.json", dump / "kineto" / "rank5.json")
    kb.write(dump / "kineto" / "rank1.json.gz", kb.build(kb.Options(rank=1, steps=3)))
    return dump


def test_corrupt_trace_fails_naming_the_offset_unless_keep_going(tmp_path: Path) -> None:
    dump = _kineto_dump(tmp_path)
    good = gzip.decompress((dump / "kineto" / "rank1.json.gz").read_bytes())
    bad = dump / "kineto" / "rank2.json.gz"
    bad.write_bytes(gzip.compress(good[: len(good) // 3]))
    code, out = run(str(dump), "--workers", "1")
    assert code == 1 and f"{bad}:offset " in out
    doc = analyze_json(str(dump), "--keep-going")
    assert [s["source"] for s in doc["skipped"]] == [str(bad)]  # type: ignore[index]
    assert sorted({row[0] for row in doc["kineto"]["per_rank"]["rows"]}) == [1, 5]  # type: ignore[index]


def test_bad_step_line_fails_unless_keep_going(tmp_path: Path) -> None:
    src = SAMPLE_DIRS[0]
    dump = tmp_path / "d"
    shutil.copytree(src / "steps", dump / "steps")
    victim = sorted((dump / "steps").iterdir())[1]
    lines = victim.read_text().splitlines()
    lines[3] = lines[3].replace('"rank":1', '"rank":-1')
    victim.write_text("\n".join(lines) + "\n")
    code, out = run(str(dump), "--workers", "1")
    assert code == 1 and f"{victim}:4: field 'rank'" in out
    doc = analyze_json(str(dump), "--keep-going")
    assert doc["skipped"] == [
        {
            "source": str(victim),
            "reason": f"{victim}:4: field 'rank' must be an integer from 0 to 2**63-1, got -1",
        }
    ]
    assert doc["coverage"]["steps"]["missing_steps"] == {"1": [[3, 3]]}  # type: ignore[index]


def test_hta_compatible_and_summary(tmp_path: Path) -> None:
    dump = _kineto_dump(tmp_path)
    doc = analyze_json(str(dump), "--hta-compatible")
    hta = {r["rank"]: r for r in doc["hta"]}  # type: ignore[union-attr]
    assert hta[5]["temporal"]["kernel_time_us"] == 130.0 and hta[5]["comm_comp_overlap_pctg"] == 26.32
    code, out = run(str(dump), "--hta-compatible", "--workers", "1")
    assert code == 0
    assert "Kineto: GPU time per rank" in out and "HTA-compatible" in out
    assert "130" in out.split("HTA-compatible")[1]


def test_cpu_only_trace_is_reported(tmp_path: Path) -> None:
    dump = tmp_path / "d"
    (dump / "kineto").mkdir(parents=True)
    shutil.copy(FIXTURES / "cpu_only.json", dump / "kineto" / "rank0.json")
    doc = analyze_json(str(dump))
    assert doc["coverage"]["kineto"]["cpu_only"] == [0]  # type: ignore[index]
    assert any("CPU-only" in w for w in doc["warnings"])  # type: ignore[union-attr]


def test_terminal_summary_of_a_sample() -> None:
    code, out = run(str(SAMPLES / "straggler-thermal"), "--workers", "1")
    assert code == 0
    assert "step records: 640 from 16 files" in out
    assert "slowest steps" in out and "comm_exposed" in out


def test_a_kineto_only_analysis_loads_neither_pandas_nor_pyarrow(tmp_path: Path) -> None:
    """What keeps its memory a fraction of HTA's: pandas alone is ~80 MB resident."""
    from support.imports import cli_code, probe

    dump = _kineto_dump(tmp_path)
    run_ = probe(cli_code("analyze", str(dump), "--json", "--hta-compatible"))
    assert run_.returncode == 0, run_.stderr
    assert "pandas" not in run_.heavy and "pyarrow" not in run_.heavy, run_.heavy_report()
    assert json.loads(run_.stdout)["hta"]


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    # 64 ranks of step records: long enough for the bar; stderr a pseudo-terminal, as a user has
    import os
    import pty
    import subprocess
    import sys

    from fmdiag.simulate.dump import SimOptions, write_dump

    dump = tmp_path / "d"
    write_dump(SimOptions(scenario="healthy", nodes=8, gpus=8, steps=5, seed=1, metrics=False), dump)
    cmd = [sys.executable, "-m", "fmdiag", "analyze", str(dump), "--workers", "1"]
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=follower, timeout=120, check=False)
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert b"step records  [" in seen and b"] 64/64" in seen
    assert b"64/64" not in proc.stdout  # the bar never mixes into the report
    # not a terminal: no bar at all
    piped = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert piped.returncode == 0 and b"[" not in piped.stderr


def test_a_steptrace_spool_directory_is_a_dump(tmp_path: Path) -> None:
    """Users point the analyzer at the spool they have: <job>.rank<N>.jsonl files, no steps/."""
    for f in (SAMPLES / "healthy" / "steps").glob("*.jsonl"):
        shutil.copy(f, tmp_path / f.name)
    doc = analyze_json(str(tmp_path))
    assert doc["coverage"]["steps"]["records"] == 640  # type: ignore[index]
    assert any("spool directory" in w for w in doc["warnings"])  # type: ignore[attr-defined]


def test_html_to_an_unwritable_path_fails_before_the_work(tmp_path: Path) -> None:
    code, out = run(str(SAMPLES / "healthy"), "--html", str(tmp_path / "missing" / "r.html"))
    assert code == 2 and "--html" in out and "no such directory" in out
    code, out = run(str(SAMPLES / "healthy"), "--html", str(tmp_path))
    assert code == 2 and "is a directory" in out


def test_a_dead_dask_scheduler_is_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    cmd = [
        sys.executable,
        "-m",
        "fmdiag",
        "analyze",
        str(SAMPLES / "healthy"),
        "--scheduler",
        f"tcp://127.0.0.1:{port}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("Error: cannot use the Dask scheduler at tcp://127.0.0.1:")
