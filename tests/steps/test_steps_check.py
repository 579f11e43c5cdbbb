"""`fmdiag steps check`: every problem of a line, binary files, implausible phases."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fmdiag.cli import cli

GOOD = '{"v":1,"job":"j","rank":0,"node":"n","step":0,"start_ns":1000000000,"end_ns":3000000000}'


def run(path: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["steps", "check", str(path)])
    return result.exit_code, result.stdout, result.stderr


def test_every_error_of_a_bad_line_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "j.rank00000.jsonl"
    f.write_text(
        GOOD
        + "\n"
        + '{"v":1,"job":"","rank":-1,"node":"n","step":"x","start_ns":5,"end_ns":9,"forward":-2}\n'
    )
    code, out, err = run(f)
    assert code == 1
    assert "1 records, 1 bad lines" in out
    for field in ("job", "rank", "step", "forward"):
        assert f"{f}:2: field {field!r}" in err, field


def test_a_binary_file_is_an_error_not_a_line_being_written(tmp_path: Path) -> None:
    f = tmp_path / "core.jsonl"
    f.write_bytes(GOOD.encode() + b"\n\x00\x00\x7fELF\x02\x01")
    code, out, _ = run(f)
    assert code == 1
    assert f"{f}: binary file: NUL byte at offset {len(GOOD) + 1}" in out
    assert "still being written" not in out
    g = tmp_path / "latin1.jsonl"
    g.write_bytes(b'{"job": "caf\xe9"}\n')
    code, out, _ = run(g)
    assert code == 1 and "binary file: not UTF-8 at offset 12" in out


def test_a_last_line_cut_mid_character_is_still_a_line_being_written(tmp_path: Path) -> None:
    f = tmp_path / "j.rank00000.jsonl"
    f.write_bytes(GOOD.encode() + b'\n{"job": "caf\xc3')
    code, out, _ = run(f)
    assert code == 0 and "1 records, 0 bad lines (last line still being written)" in out


def test_a_phase_longer_than_its_step_is_a_warning(tmp_path: Path) -> None:
    f = tmp_path / "j.rank00000.jsonl"
    f.write_text(GOOD[:-1] + ',"forward":1.5,"data_wait":2500}\n')  # a 2 s step, 2500 "seconds" of data wait
    code, out, err = run(f)
    assert code == 0  # valid: the analyzer reads it; only flagged
    assert "1 records, 0 bad lines, 1 warnings" in out
    assert "warning: " in err and "field 'data_wait': 2500 s is longer than the step itself (2 s)" in err
    assert "forward" not in err
