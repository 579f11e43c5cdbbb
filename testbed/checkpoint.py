"""A rank's checkpoint: its stage's parameters and Adam state, written and fsynced.

The fsync is the point. A cgroup v1 blkio write throttle applies to I/O the process submits
itself; buffered writes reach the disk later through kernel writeback, unattributed, and a
throttled checkpoint would look free. Syncing each file in the training loop makes the
checkpoint's cost land in the step that wrote it, as a synchronous checkpoint's does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _sync_write(path: Path, write: Any) -> int:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
    os.replace(tmp, path)
    return size


def save(
    directory: str | os.PathLike[str], rank: int, step: int, arrays: dict[str, np.ndarray[Any, Any]]
) -> int:
    """Write ``arrays`` as ``NAME.npy`` into ``directory/rank{rank}/`` (replacing the last
    checkpoint), then ``meta.json``; returns the bytes written."""
    out = Path(directory) / f"rank{rank}"
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, array in arrays.items():
        written += _sync_write(out / f"{name}.npy", lambda f, a=array: np.save(f, a, allow_pickle=False))
    meta = {"rank": rank, "step": step, "arrays": sorted(arrays), "bytes": written}
    written += _sync_write(out / "meta.json", lambda f: f.write(json.dumps(meta).encode() + b"\n"))
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames
    finally:
        os.close(fd)
    return written


def load(directory: str | os.PathLike[str], rank: int) -> tuple[int, dict[str, np.ndarray[Any, Any]]]:
    """(step, arrays) of a rank's checkpoint."""
    out = Path(directory) / f"rank{rank}"
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    return int(meta["step"]), {name: np.load(out / f"{name}.npy") for name in meta["arrays"]}
