"""The step writer: whole lines, nothing completed lost to SIGKILL, never blocking on slow storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fmdiag import steprecord, steptrace
from fmdiag.steprecord import read_file


def test_identity_comes_from_torchrun_and_slurm_variables() -> None:
    env = {
        "TORCHELASTIC_RUN_ID": "none",
        "SLURM_JOB_ID": "4242",
        "RANK": "17",
        "LOCAL_RANK": "1",
        "SLURMD_NODENAME": "p5-017",
    }
    assert steptrace.identity(env=env) == ("4242", 17, 1, "p5-017")
    assert steptrace.identity(job="mine", rank=2, local_rank=0, node="x", env=env) == (
        "mine",
        2,
        0,
        "x",
    )
    job, rank, local_rank, node = steptrace.identity(env={})
    assert (job, rank, local_rank) == ("local", 0, None) and node


def test_a_non_integer_rank_variable_is_named() -> None:
    with pytest.raises(ValueError, match="RANK='abc'"):
        steptrace.identity(env={"RANK": "abc"})


def test_spool_dir_from_argument_env_or_default() -> None:
    assert steprecord.spool_dir("/a", env={"FMDIAG_SPOOL_DIR": "/b"}) == Path("/a")
    assert steprecord.spool_dir(None, env={"FMDIAG_SPOOL_DIR": "/b"}) == Path("/b")
    assert steprecord.spool_dir(None, env={}) == Path(steprecord.DEFAULT_SPOOL_DIR)


def test_records_phases_and_fields(tmp_path: Path) -> None:
    with steptrace.StepTracer(tmp_path, job="llama/70b", rank=5, local_rank=5, node="n0") as tracer:
        for _ in range(3):
            with tracer.step(tokens=1024, samples=4) as step:
                with step.phase("data_wait"):
                    time.sleep(0.002)
                with step.phase("forward"):
                    pass
                with step.phase("data_wait"):
                    time.sleep(0.002)
    assert tracer.path.name == "llama_70b.rank00005.jsonl"
    result = read_file(tracer.path)
    assert not result.errors and not result.partial_tail
    assert [r.step for r in result.records] == [0, 1, 2]
    first = result.records[0]
    assert first.job == "llama/70b" and first.local_rank == 5 and first.tokens == 1024
    assert first.phases["data_wait"] >= 0.004  # both data_wait blocks add up
    assert first.duration_s >= first.phases["data_wait"]


def test_unknown_phase_and_misuse_are_refused(tmp_path: Path) -> None:
    with steptrace.StepTracer(tmp_path, job="j", rank=0) as tracer:
        step = tracer.begin_step()
        with pytest.raises(ValueError, match="unknown phase 'fwd'"):
            step.add_phase("fwd", 1.0)
        with pytest.raises(RuntimeError, match="has not ended"):
            tracer.begin_step()
        tracer.end_step()
        with pytest.raises(RuntimeError, match="without begin_step"):
            tracer.end_step()


def test_a_step_that_raises_is_not_recorded(tmp_path: Path) -> None:
    with steptrace.StepTracer(tmp_path, job="j", rank=0) as tracer:
        with pytest.raises(ZeroDivisionError), tracer.step():
            1 / 0  # noqa: B018
        with tracer.step(step=10):
            pass
    assert [r.step for r in read_file(tracer.path).records] == [10]


def test_a_crash_fragment_is_ended_so_the_next_record_is_whole(tmp_path: Path) -> None:
    path = tmp_path / steprecord.file_name("j", 0)
    path.write_text('{"v":1,"job":"j","ran')  # a previous writer died mid-line
    with steptrace.StepTracer(tmp_path, job="j", rank=0) as tracer, tracer.step(step=1):
        pass
    result = read_file(path)
    assert [r.step for r in result.records] == [1]
    assert len(result.errors) == 1 and result.errors[0].line == 1


def test_torch_is_not_imported() -> None:
    code = (
        "import sys; from fmdiag import steptrace; "
        "steptrace.StepTracer('/tmp/fmdiag-t', job='j').close(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_slow_storage_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    """A FIFO with no reader blocks the writer thread's open(), like a hung filesystem."""
    fifo = tmp_path / steprecord.file_name("j", 0)
    os.mkfifo(fifo)
    tracer = steptrace.StepTracer(tmp_path, job="j", rank=0, buffer_size=4, handoff_timeout=0.01)
    t0 = time.monotonic()
    for _ in range(40):
        with tracer.step():
            pass
    elapsed = time.monotonic() - t0
    # 40 steps cost at most a bounded wait each, however long storage hangs.
    assert elapsed < 40 * 1.0
    assert tracer.dropped >= 40 - 4 - 1  # queue holds 4, the writer holds one more
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(open(fifo, "rb").read().splitlines()))
    reader.start()  # storage comes back
    deadline = time.monotonic() + 10
    while tracer.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    with tracer.step():
        pass
    tracer.close()
    reader.join(10)
    assert lines, "queued records reach storage once it answers"
    assert b'"dropped":' in lines[-1]


WRITER = textwrap.dedent(
    """
    import sys, time
    from fmdiag import steptrace
    tracer = steptrace.StepTracer(sys.argv[1], job="kill", rank=0, node="n")
    step = 0
    while True:
        tracer.begin_step(step)
        time.sleep(0.001)
        tracer.end_step(tokens=step)
        print(step, flush=True)   # reported only after end_step returned
        step += 1
    """
)


def test_sigkill_mid_run_keeps_every_completed_step(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    completed = -1
    for line in proc.stdout:
        completed = int(line)
        if completed >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    result = read_file(tmp_path / steprecord.file_name("kill", 0))
    steps = [r.step for r in result.records]
    assert not result.errors, "no torn line"
    assert steps == list(range(len(steps))), "in order, none missing"
    assert steps[-1] >= completed, "every step reported complete is on disk"
    assert all(r.tokens == r.step for r in result.records)


def test_a_step_ended_after_close_is_counted_not_silently_lost(tmp_path: Path) -> None:
    """close() from another thread (a signal handler, an atexit hook) can land while a step
    is in progress: that record can no longer be written, so it is counted, and the training
    loop is not made to wait ``handoff_timeout`` for a writer that has stopped."""
    tracer = steptrace.StepTracer(tmp_path, job="j", rank=0, node="n", handoff_timeout=5)
    with tracer.step():
        pass
    tracer.begin_step()
    tracer.close()
    tracer.end_step()  # must not queue behind the writer's stop mark, never to be written
    assert tracer.dropped == 1
    with pytest.raises(RuntimeError, match="closed"):
        tracer.begin_step()
    assert [r.step for r in read_file(tracer.path).records] == [0]


def test_records_lost_to_write_errors_are_counted_in_dropped(tmp_path: Path) -> None:
    """ENOSPC, EIO, a path that cannot be opened: a record the kernel refused is as lost as
    one dropped from a full buffer, and the exporter only knows what ``dropped`` says."""
    tracer = steptrace.StepTracer(tmp_path, job="j", rank=0, node="n", handoff_timeout=600)
    tracer.path.mkdir()  # opening the step file fails with EISDIR
    for _ in range(3):
        with tracer.step():
            pass
    tracer.path.rmdir()  # storage recovers
    with tracer.step():
        pass
    tracer.close()
    records = read_file(tracer.path).records
    assert [r.step for r in records] == [3]
    assert records[0].dropped == 3


@pytest.mark.parametrize(
    "misuse",
    [
        lambda t: t.begin_step(-1),
        lambda t: t.begin_step().set(tokens=-5),
        lambda t: t.begin_step().set(samples=-1),
        lambda t: t.begin_step().add_phase("forward", float("inf")),
        lambda t: t.begin_step().add_phase("forward", float("nan")),
    ],
)
def test_values_the_reader_would_refuse_are_refused_when_recorded(tmp_path: Path, misuse: Any) -> None:
    """A negative count or an infinite phase makes the whole line invalid for every reader:
    the step would be lost silently days later. Refuse it where the mistake is made."""
    tracer = steptrace.StepTracer(tmp_path, job="j", rank=0, node="n")
    with pytest.raises(ValueError):
        misuse(tracer)
    tracer.close()


def test_a_negative_rank_variable_is_refused() -> None:
    with pytest.raises(ValueError, match="RANK"):
        steptrace.identity(env={"RANK": "-1"})


def test_a_forked_child_is_told_to_make_its_own_tracer(tmp_path: Path) -> None:
    """DataLoader workers are forked from the training process. The child has a copy of the
    tracer but no writer thread: a step recorded there would vanish (and wait
    ``handoff_timeout``), so it is refused; the parent's file gets no duplicate lines."""
    tracer = steptrace.StepTracer(tmp_path, job="j", rank=0, node="n")
    for _ in range(3):
        with tracer.step():
            pass
    pid = os.fork()
    if pid == 0:  # the child: exit code says what happened, nothing else runs here
        code = 3
        try:
            tracer.begin_step()
            tracer.end_step()
            code = 1
        except RuntimeError as exc:
            code = 0 if "fork" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with tracer.step():
        pass
    tracer.close()
    records = read_file(tracer.path).records
    assert [r.step for r in records] == [0, 1, 2, 3]


def test_layout_coordinates_are_written_and_read_back(tmp_path: Path) -> None:
    tracer = steptrace.StepTracer(
        tmp_path, job="pp", rank=5, node="n1", layout={"pp_rank": 1, "dp_rank": 2, "tp_rank": 0}
    )
    with tracer.step():
        pass
    tracer.close()
    (path,) = steprecord.step_files(tmp_path)
    (record,) = read_file(path).records
    assert (record.dp_rank, record.pp_rank, record.tp_rank, record.cp_rank, record.ep_rank) == (
        2,
        1,
        0,
        None,
        None,
    )


@pytest.mark.parametrize(
    "layout", [{"stage": 1}, {"pp_rank": -1}, {"dp_rank": True}, {"tp_rank": 1.0}, {"ep_rank": 2**63}]
)
def test_a_bad_layout_is_refused_at_construction(tmp_path: Path, layout: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="layout"):
        steptrace.StepTracer(tmp_path, job="j", rank=0, node="n", layout=layout)
