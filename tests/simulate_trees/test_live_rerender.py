"""Re-rendering while collectors read (``--live``): never a partial file, never a stray temp file."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fmdiag.exporters import gpu_state_file
from fmdiag.simulate.nodes.readings import NodeState
from fmdiag.simulate.nodes.render import render_node

STATS_LINE = re.compile(
    r"^(snapshot_time|start_time|elapsed_time) +\d+\.\d{9} secs\.nsecs$|^.+ \d+ samples \[\w+\]"
)
PID_STAT = re.compile(r"^\d+ \([^)]*\) S( \d+){49}\n\Z")
GONE = (FileNotFoundError, NotADirectoryError)


def check_file(path: Path, text: str) -> str | None:
    """Why ``text`` cannot be a complete file at ``path``, or None when it is."""
    name = path.name
    if name == "cmdline":
        return None if text.endswith("\0") else "cmdline not NUL-terminated"
    if not text.endswith("\n"):
        return "no final newline"
    if name == "state.json":
        try:
            gpu_state_file.loads(text, str(path))
        except gpu_state_file.GpuStateError as exc:
            return str(exc)
        return None
    if "hw_counters" in path.parts or "counters" in path.parts:
        return None if re.fullmatch(r"\d+\n", text) else "counter not an integer line"
    if name in ("stats", "read_ahead_stats"):
        bad = [line for line in text.splitlines() if not STATS_LINE.match(line)]
        return f"bad stats lines {bad[:2]}" if bad or not text.startswith("snapshot_time") else None
    if name == "rpc_stats":
        last_is_row = re.search(r"\n\d+:\t\t +\d+ +\d+ +\d+(   \| +\d+ +\d+ +\d+)?\n\Z", text)
        section = "\t\t\tmodify\n" if "mdc" in path.parts else "\noffset "
        complete = text.startswith("snapshot_time:") and section in text and last_is_row
        return None if complete else "rpc_stats cut short"
    if name == "stat" and path.parent.name.isdigit():
        return None if PID_STAT.match(text) else "pid stat incomplete"
    if name == "stat":
        return None if text.startswith("cpu  ") and text.endswith("0 0 0 0 0 0 0 0 0 0 0\n") else "stat cut"
    return None


def read_tree(root: Path, problems: list[str], counters: dict[str, int]) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d != ".staging"]
        else:
            hidden = [n for n in dirnames + filenames if n.startswith(".")]
            if hidden:
                problems.append(f"{here}: temporary entries visible: {hidden}")
        for name in filenames:
            path = here / name
            try:
                text = path.read_text()
            except GONE:
                continue  # removed between listing and reading: a device or mount went away
            why = check_file(path, text)
            if why:
                problems.append(f"{path}: {why}: {text[-80:]!r}")
    # Through the class links, as a collector walks them: counters only ever grow.
    class_dir = root / "sys" / "class" / "infiniband"
    try:
        names = os.listdir(class_dir)
    except GONE:
        return
    for dev in names:
        try:
            text = (class_dir / dev / "ports" / "1" / "hw_counters" / "tx_bytes").read_text()
        except GONE:
            continue
        if not re.fullmatch(r"\d+\n", text):
            problems.append(f"{dev}/tx_bytes: {text!r}")
            continue
        value = int(text)
        if value < counters.get(dev, 0):
            problems.append(f"{dev}/tx_bytes went back from {counters[dev]} to {value}")
        counters[dev] = value


@pytest.mark.parametrize("version", ["2.10", "2.14"])
def test_readers_never_see_partial_files(
    tmp_path: Path, node: Callable[..., NodeState], version: str
) -> None:
    def snapshot(step: int) -> NodeState:
        state = node(step=step, version=version, filesystems=1 + step % 2)
        if step % 5 == 0:
            state.efa = state.efa[:2]  # a device drops out now and then
        if step % 7 == 0:
            state.host.processes = state.host.processes[:1]
        return state

    render_node(snapshot(1), tmp_path, mellanox=1)
    stop = threading.Event()
    problems: list[str] = []
    passes = [0, 0]

    def reader(slot: int) -> None:
        counters: dict[str, int] = {}
        while not stop.is_set():
            try:
                read_tree(tmp_path, problems, counters)
            except Exception as exc:  # anything but a vanished file is a failure
                problems.append(f"reader crashed: {exc!r}")
                return
            passes[slot] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for step in range(2, 30):
            render_node(snapshot(step), tmp_path, mellanox=step % 2)
        deadline = time.monotonic() + 30
        while min(passes) < 2 and not problems and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, "\n".join(problems[:20])
    assert min(passes) >= 2


def test_rendering_is_deterministic(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    def tree(root: Path) -> dict[str, str]:
        out = {}
        for dirpath, _dirnames, filenames in os.walk(root):
            for name in filenames:
                p = Path(dirpath) / name
                out[str(p.relative_to(root))] = p.read_text()
            for name in _dirnames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    out[str(p.relative_to(root))] = "-> " + os.readlink(p)
        return out

    trees = []
    for run in ("a", "b"):
        root = tmp_path / run
        for step in (1, 2, 3):
            render_node(node(step=step, version="2.15", filesystems=2), root, mellanox=1)
        trees.append(tree(root))
    assert trees[0] == trees[1]
    assert any(k.endswith("rpc_stats") for k in trees[0])
