"""The test bed's rank program, part by part, then two real ranks on 127.0.0.1.

The parts are checked against independent references: the loader's batches against samples
decoded straight from the shard files, the pipelined model against the unsplit one, p2p frames
against the arrays sent. The end-to-end test runs the real worker processes (JAX over gloo, a
spawned loader, the profiler) and reads what they leave behind.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmdiag import steprecord
from fmdiag.testbed import checkpoint, dataset, loader, model, p2p, pipeline
from fmdiag.testbed.worker_config import WorkerConfig

SMALL_DATA = {"shards": 4, "samples_per_shard": 6, "sample_bytes": 2048, "seq_len": 32, "vocab": 64}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    dataset.write_dataset(out, seed=3, **SMALL_DATA)
    return out


# --- config -----------------------------------------------------------------------------


def test_config_json_round_trip(tmp_path: Path) -> None:
    cfg = replace(
        WorkerConfig.defaults(),
        rank=3,
        world=4,
        pp=2,
        pp_rank=1,
        dp=2,
        dp_rank=1,
        stage_layers=[1, 3],
        p2p_listen="10.0.0.2:12400",
        seq_len=256,
        seq_buckets=[32, 256],
        trace_dir="/tmp/t",
        trace_steps=2,
    )
    path = tmp_path / "rank3.json"
    cfg.to_json(path)
    again = WorkerConfig.from_json(path)
    assert again == cfg
    assert json.loads(path.read_text())["stage_layers"] == [1, 3]
    assert "layers" in WorkerConfig.field_names()


def test_config_names_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"world": 2, "rank": 1, "stage_layers": [2, 2], "seq_buckets": [512]}))
    with pytest.raises(ValueError) as err:
        WorkerConfig.from_json(path)
    message = str(err.value)
    assert "pp 1 x dp 1 must be world 2" in message
    assert "stage_layers [2, 2]" in message
    assert "seq_buckets [512]" in message
    path.write_text(json.dumps({"wrold": 2}))
    with pytest.raises(ValueError, match="unknown field"):
        WorkerConfig.from_json(path)


def test_sequence_length_is_shared_by_a_pipeline_and_moves_between_groups() -> None:
    base = replace(WorkerConfig.defaults(), world=4, dp=2, pp=2, stage_layers=[2, 2], p2p_peer="h:1")
    buckets = {"seq_len": 256, "seq_buckets": [32, 64, 128, 256]}
    stage0 = replace(base, rank=0, dp_rank=0, **buckets)  # type: ignore[arg-type]
    stage1 = replace(base, rank=2, pp_rank=1, dp_rank=0, p2p_peer=None, p2p_listen="h:2", **buckets)  # type: ignore[arg-type]
    other = replace(base, rank=1, dp_rank=1, **buckets)  # type: ignore[arg-type]
    steps = range(40)
    assert [stage0.step_seq_len(s) for s in steps] == [stage1.step_seq_len(s) for s in steps]
    assert [stage0.step_seq_len(s) for s in steps] != [other.step_seq_len(s) for s in steps]
    assert {stage0.step_seq_len(s) for s in steps} == {32, 64, 128, 256}
    assert stage0.lengths() == [32, 64, 128, 256]
    assert WorkerConfig.defaults().step_seq_len(7) == WorkerConfig.defaults().seq_len


# --- data set and loader ----------------------------------------------------------------


def test_dataset_is_deterministic(tmp_path: Path, small_data: Path) -> None:
    manifest = dataset.write_dataset(tmp_path, seed=3, **SMALL_DATA)
    assert manifest == dataset.read_manifest(small_data)
    for name in manifest["shards"]:
        assert (tmp_path / name).read_bytes() == (small_data / name).read_bytes()
    assert manifest["bytes_on_disk"] == sum((tmp_path / n).stat().st_size for n in manifest["shards"])


def _reference_batch(data: Path, dp: int, dp_rank: int, b: int, batch: int) -> np.ndarray[Any, Any]:
    manifest = dataset.read_manifest(data)
    names = loader.shards_of(manifest, dp, dp_rank)
    picks = loader.batch_samples(
        b, batch=batch, shards=len(names), per_shard=manifest["samples_per_shard"], seed=5, dp_rank=dp_rank
    )
    rows = []
    for shard, index in picks:
        raw = (data / names[shard]).read_bytes()
        offset, length = dataset.read_index(raw)[index]
        rows.append(
            loader.decode_sample(raw[offset : offset + length], seq_len=manifest["seq_len"], rounds=0)
        )
    return np.stack(rows)


def test_loader_batches_equal_the_samples_on_disk(small_data: Path) -> None:
    batches: dict[int, list[np.ndarray[Any, Any]]] = {}
    for dp_rank in (0, 1):
        with loader.Loader(
            small_data,
            dp=2,
            dp_rank=dp_rank,
            batch=5,
            seq_len=32,
            vocab=64,
            workers=2,
            prefetch=2,
            decode_rounds=1,
            seed=5,
        ).start() as ld:
            assert len(ld.pids) == 2
            # 2 shards x 6 samples per dp rank: 8 batches of 5 go round the data set three times.
            batches[dp_rank] = [ld.next() for _ in range(8)]
        for b, got in enumerate(batches[dp_rank]):
            assert got.dtype == np.int32 and got.shape == (5, 33)
            np.testing.assert_array_equal(got, _reference_batch(small_data, 2, dp_rank, b, 5))
    # Disjoint shards: no sequence of one dp rank appears in the other's batches.
    seen = [{row.tobytes() for batch in batches[r] for row in batch} for r in (0, 1)]
    assert not seen[0] & seen[1]
    assert all(int(b.min()) >= 0 and int(b.max()) < 64 for r in (0, 1) for b in batches[r])


def test_loader_refuses_a_data_set_that_does_not_fit(small_data: Path) -> None:
    args: dict[str, Any] = {"dp": 1, "dp_rank": 0, "batch": 2, "workers": 1, "prefetch": 1}
    args |= {"decode_rounds": 0, "seed": 0}
    with pytest.raises(ValueError, match="sequences of 32 tokens, not 64"):
        loader.Loader(small_data, seq_len=64, vocab=64, **args)
    with pytest.raises(ValueError, match="vocabulary of 64"):
        loader.Loader(small_data, seq_len=32, vocab=32, **args)
    with pytest.raises(ValueError, match="fewer than dp=5"):
        loader.Loader(small_data, seq_len=32, vocab=64, **{**args, "dp": 5})


def _dead(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_loader_workers_die_with_their_rank(small_data: Path, tmp_path: Path) -> None:
    """A rank killed with SIGKILL leaves no loader process behind."""
    script = tmp_path / "rank.py"
    script.write_text(
        "import json, os, signal, sys\n"
        "from fmdiag.testbed.loader import Loader\n"
        "if __name__ == '__main__':\n"
        f"    ld = Loader({str(small_data)!r}, dp=1, dp_rank=0, batch=2, seq_len=32, vocab=64,\n"
        "                workers=2, prefetch=2, decode_rounds=0, seed=0).start()\n"
        "    ld.next()\n"
        "    print(json.dumps(ld.pids), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pids = json.loads(proc.stdout)
    deadline = time.monotonic() + 10
    while not all(_dead(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_dead(p) for p in pids)


# --- model ------------------------------------------------------------------------------

SHAPE = model.ModelShape(vocab=64, d_model=32, heads=4, seq_len=16, stage_layers=(1, 2))
WHOLE = model.ModelShape(SHAPE.vocab, SHAPE.d_model, SHAPE.heads, SHAPE.seq_len, (3,))


def _tokens(seed: int, batch: int = 3, length: int = 16) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    data = np.random.default_rng(seed).integers(0, SHAPE.vocab, size=(batch, length + 1)).astype(np.int32)
    return data[:, :-1], data[:, 1:]


@pytest.fixture(scope="module")
def whole_program() -> model.StageProgram:
    """The unsplit model's program, compiled once for the tests that share its shapes."""
    return model.StageProgram(WHOLE, 0, padded_size=model.param_count(WHOLE, 0) + 10, lr=3e-3, dp=2)


def test_split_model_equals_the_unsplit_model(whole_program: model.StageProgram) -> None:
    tokens, targets = _tokens(0)
    # The same seed gives the split stages exactly the weights of the one-stage model.
    single = model.init_stage(WHOLE, 0, seed=7)
    stages = [model.init_stage(SHAPE, s, seed=7) for s in (0, 1)]
    assert len(single["layers"]) == 3
    np.testing.assert_array_equal(single["layers"][1]["w_qkv"], stages[1]["layers"][0]["w_qkv"])
    np.testing.assert_array_equal(single["head"], stages[1]["head"])
    loss, vjp = whole_program.forward(single, tokens, targets)
    grads, _ = whole_program.backward(vjp, np.float32(1.0), whole_program.zero_grads(single))
    np.testing.assert_allclose(
        float(loss), float(model.full_loss(WHOLE, [single], tokens, targets)), rtol=1e-5
    )

    sizes = [model.param_count(SHAPE, s) for s in (0, 1)]
    assert sum(sizes) == whole_program.size
    programs = [model.StageProgram(SHAPE, s, padded_size=max(sizes), lr=1e-3, dp=1) for s in (0, 1)]
    acts, vjp0 = programs[0].forward(stages[0], tokens, None)
    piped_loss, vjp1 = programs[1].forward(stages[1], np.asarray(acts), targets)
    grads1, act_grad = programs[1].backward(vjp1, np.float32(1.0), programs[1].zero_grads(stages[1]))
    grads0, none = programs[0].backward(vjp0, np.asarray(act_grad), programs[0].zero_grads(stages[0]))
    assert none is None
    np.testing.assert_allclose(float(piped_loss), float(loss), rtol=1e-5)
    joined = {**grads0, **grads1, "layers": grads0["layers"] + grads1["layers"]}
    for got, want in zip(jax.tree.leaves(joined), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=1e-6)
    flat = programs[0].flatten(grads0)
    assert flat.shape == (max(sizes),) and not np.any(np.asarray(flat)[sizes[0] :])


def test_adam_steps_lower_the_loss(whole_program: model.StageProgram) -> None:
    prog = whole_program
    params = jax.tree.map(jnp.asarray, model.init_stage(WHOLE, 0, seed=1))
    state = model.AdamState.zeros(prog.size)
    tokens, targets = _tokens(1)
    losses = []
    for _ in range(8):
        loss, vjp = prog.forward(params, tokens, targets)
        losses.append(float(loss))
        grads, _ = prog.backward(vjp, np.float32(1.0), prog.zero_grads(params))
        summed = 2 * prog.flatten(grads)  # what an all-reduce over dp=2 identical ranks returns
        params, state = prog.update(params, state, summed)
    assert losses[-1] < losses[0] - 0.5
    assert int(state.t) == 8


def test_one_f_one_b_schedule() -> None:
    assert pipeline.schedule(1, 0, 3) == [("F", 0), ("B", 0), ("F", 1), ("B", 1), ("F", 2), ("B", 2)]
    first = pipeline.schedule(2, 0, 4)
    assert first == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3), ("B", 2), ("B", 3)]
    assert pipeline.schedule(2, 1, 4) == pipeline.schedule(1, 0, 4)
    for stages in (2, 3, 4):
        for stage in range(stages):
            for micro in (1, 2, 5):
                ops = pipeline.schedule(stages, stage, micro)
                assert sorted(ops) == sorted(
                    [("F", i) for i in range(micro)] + [("B", i) for i in range(micro)]
                )
                assert all(ops.index(("F", i)) < ops.index(("B", i)) for i in range(micro))
                in_flight = max(
                    sum(1 for op in ops[: k + 1] if op[0] == "F")
                    - sum(1 for op in ops[: k + 1] if op[0] == "B")
                    for k in range(len(ops))
                )
                assert in_flight == min(stages - stage, micro)


# --- p2p --------------------------------------------------------------------------------


def _pair(hello_a: str = "job/dp0", hello_b: str = "job/dp0") -> tuple[p2p.Link, p2p.Link]:
    address = f"127.0.0.1:{free_port()}"
    server = p2p.Link.listen(address)
    accepted: list[p2p.Link | BaseException] = []

    def accept() -> None:
        try:
            accepted.append(p2p.Link.accept(server, address, hello=hello_b, timeout=10))
        except BaseException as exc:
            accepted.append(exc)

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        client = p2p.Link.connect(address, hello=hello_a, timeout=10)
    finally:
        thread.join()
    if isinstance(accepted[0], BaseException):
        raise accepted[0]
    return client, accepted[0]


def test_p2p_frames_round_trip() -> None:
    a, b = _pair()
    arrays: list[np.ndarray[Any, Any]] = [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.array(3.5, np.float32),
        np.zeros((0, 5), np.int32),
        np.arange(10, dtype=np.int64)[::2],  # not contiguous: sent as a copy
        np.random.default_rng(0).standard_normal((64, 128, 32)).astype(np.float32),  # 1 MB
    ]
    with a, b:
        for i, x in enumerate(arrays):
            a.send(f"act/0/{i}", x)
            b.send(f"grad/0/{i}", -x if x.dtype.kind == "f" else x)
        for i, x in enumerate(arrays):
            got = b.recv(f"act/0/{i}")
            assert got.dtype == x.dtype and got.shape == x.shape
            np.testing.assert_array_equal(got, x)
            np.testing.assert_array_equal(a.recv(f"grad/0/{i}"), -x if x.dtype.kind == "f" else x)
        a.send("act/1/0", arrays[0])
        with pytest.raises(p2p.P2PError, match=r"sent 'act/1/0' where 'act/1/1' was due"):
            b.recv("act/1/1")


def test_p2p_refuses_the_wrong_peer_and_names_a_missing_one() -> None:
    with pytest.raises(p2p.P2PError, match="is 'job/dp1', expected 'job/dp0'"):
        _pair("job/dp0", "job/dp1")
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(p2p.P2PError, match=f"cannot connect to pipeline peer {address}"):
        p2p.Link.connect(address, hello="x", timeout=0.5)
    with pytest.raises(p2p.P2PError, match="refused"):
        p2p.decode_header(json.dumps({"tag": "t", "dtype": "O", "shape": [1]}).encode())


def test_p2p_reports_a_peer_that_went_away() -> None:
    a, b = _pair()
    a.close()
    with pytest.raises(p2p.P2PError, match="closed the connection"):
        b.recv()
    b.close()


# --- checkpoint -------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    arrays = {"params": np.arange(5, dtype=np.float32), "adam_t": np.asarray(3, np.int32)}
    written = checkpoint.save(tmp_path, 2, 9, arrays)
    step, back = checkpoint.load(tmp_path, 2)
    assert step == 9 and written > 0
    np.testing.assert_array_equal(back["params"], arrays["params"])
    assert sorted(p.name for p in (tmp_path / "rank2").iterdir()) == [
        "adam_t.npy",
        "meta.json",
        "params.npy",
    ]


# --- the worker, end to end -------------------------------------------------------------


def test_worker_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "rank.json"
    path.write_text(json.dumps({"rank": 5}))
    proc = subprocess.run(
        [sys.executable, "-m", "fmdiag.testbed.worker", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fmdiag.testbed.worker: worker config: rank 5 is not in [0, world=1)"
    ]


TINY = {"vocab": 64, "d_model": 32, "heads": 4, "seq_len": 32, "batch": 2, "loader_workers": 1, "prefetch": 2}


@pytest.mark.parametrize("layout", ["dp2", "pp2"])
def test_two_ranks_train_three_steps(layout: str, small_data: Path, tmp_path: Path) -> None:
    pp = 2 if layout == "pp2" else 1
    dp = 2 // pp
    listen = f"127.0.0.1:{free_port()}"
    common: dict[str, Any] = {
        **TINY,
        "job": "e2e",
        "world": 2,
        "coordinator": f"127.0.0.1:{free_port()}",
        "pp": pp,
        "dp": dp,
        "stage_layers": [1] * pp,
        "layers": pp,
        "micro_batches": 3,
        "seq_buckets": [16, 32] if pp == 2 else None,
        "steps": 3,
        "data_dir": str(small_data),
        "checkpoint_every": 3,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "spool_dir": str(tmp_path / "spool"),
        "trace_first_step": 1,
        "trace_steps": 1,
        "p2p_timeout_s": 60,
        "init_timeout_s": 60,
        "go_file": str(tmp_path / "go"),
    }
    configs = []
    procs = []
    for rank in (0, 1):
        pp_rank, dp_rank = (rank, 0) if pp == 2 else (0, rank)
        cfg = WorkerConfig(
            **common,
            rank=rank,
            local_rank=rank,
            node=f"n{rank}",
            pp_rank=pp_rank,
            dp_rank=dp_rank,
            p2p_listen=listen if pp_rank == 1 else None,
            p2p_peer=listen if pp == 2 and pp_rank == 0 else None,
            pid_file=str(tmp_path / f"rank{rank}.pid.json"),
            trace_dir=str(tmp_path / f"jax{rank}"),
        )
        configs.append(cfg)
        path = tmp_path / f"rank{rank}.json"
        cfg.to_json(path)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "fmdiag.testbed.worker", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        # Both ranks report ready (compiled) and wait for the go file before step 0.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):
            docs = [c.pid_file for c in configs]
            if all(Path(d).exists() and json.loads(Path(d).read_text())["ready"] for d in docs):
                break
            time.sleep(0.1)
        assert not (tmp_path / "spool").exists() or not any((tmp_path / "spool").iterdir())
        (tmp_path / "go").write_text("go\n")
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)

    for rank in (0, 1):
        result = steprecord.read_file(tmp_path / "spool" / steprecord.file_name("e2e", rank))
        assert not result.errors and not result.partial_tail
        records = result.records
        assert [r.step for r in records] == [0, 1, 2]
        pp_rank, dp_rank = (rank, 0) if pp == 2 else (0, rank)
        for r in records:
            assert (r.rank, r.node, r.local_rank) == (rank, f"n{rank}", rank)
            assert (r.dp_rank, r.pp_rank, r.tp_rank) == (dp_rank, pp_rank, 0)
            assert r.samples == 3 * 2 and r.tokens == 3 * 2 * configs[rank].step_seq_len(r.step)
            for phase in ("data_wait", "forward", "backward", "comm_exposed", "optimizer"):
                assert phase in r.phases
            assert sum(r.phases.values()) <= r.duration_s + 1e-3
            assert ("checkpoint" in r.phases) == (r.step == 2)
        pid_doc = json.loads((tmp_path / f"rank{rank}.pid.json").read_text())
        assert pid_doc["rank"] == rank and pid_doc["ready"] is True and len(pid_doc["loader_pids"]) == 1
        assert not any(not _dead(pid) for pid in [pid_doc["pid"], *pid_doc["loader_pids"]])
        step, arrays = checkpoint.load(tmp_path / "ckpt", rank)
        assert step == 2 and arrays["adam_t"] == 3
        traces = list((tmp_path / f"jax{rank}").glob("plugins/profile/*/*.xplane.pb"))
        assert len(traces) == 1, outputs[rank]
    assert "done: 3 steps, loss" in outputs[-1]
