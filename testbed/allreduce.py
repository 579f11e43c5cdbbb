"""The data-parallel gradient all-reduce, as a real XLA collective over gloo.

A host-side reduction (``process_allgather`` and numpy) would time Python, not a collective.
Here every process's CPU device joins one global mesh shaped (pp, dp) with axes ("pp", "dp"),
and a jitted ``shard_map`` of ``psum`` over "dp" sums each pipeline stage's gradients across
its data-parallel group only, as DDP's or FSDP's NCCL all-reduce would, through gloo's TCP
transport: a node's bandwidth limit slows it for real.

Stages differ in size, and one program serves them all, so every rank's flat gradient is
padded to the largest stage's parameter count. Where each process sits in the mesh is
exchanged at start-up, so the orchestrator may place ranks on nodes in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

try:  # jax >= 0.6 has it at the top level
    _shard_map: Callable[..., Any] = jax.shard_map
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map as _shard_map


def layout_mesh(pp: int, dp: int, pp_rank: int, dp_rank: int) -> Mesh:
    """The (pp, dp) mesh of every process's one CPU device; a collective call (all ranks)."""
    if len(jax.local_devices()) != 1:
        raise RuntimeError(f"expected one CPU device per process, found {len(jax.local_devices())}")
    coords = np.asarray(multihost_utils.process_allgather(np.array([pp_rank, dp_rank], np.int32)))
    grid: np.ndarray[Any, np.dtype[np.object_]] = np.empty((pp, dp), dtype=object)
    for device in jax.devices():
        p, d = (int(c) for c in coords[device.process_index])
        if grid[p, d] is not None:
            raise RuntimeError(f"two processes claim pipeline stage {p}, data-parallel rank {d}")
        grid[p, d] = device
    if any(cell is None for cell in grid.flat):
        raise RuntimeError(f"the {jax.process_count()} processes do not fill a {pp} x {dp} layout")
    return Mesh(grid, ("pp", "dp"))


def _sum_over_dp(x: jax.Array) -> jax.Array:
    total: jax.Array = jax.lax.psum(x, "dp")  # type: ignore[no-untyped-call]
    return total


class GradientAllReduce:
    """``reduce(flat)``: the sum of ``flat`` over this rank's data-parallel group."""

    def __init__(self, mesh: Mesh, length: int) -> None:
        self.mesh, self.length = mesh, length
        self.pp, self.dp = mesh.devices.shape
        spec = PartitionSpec("pp", "dp")  # type: ignore[no-untyped-call]
        self.sharding = NamedSharding(mesh, spec)
        self.device = jax.local_devices()[0]
        summed = _shard_map(_sum_over_dp, mesh=mesh, in_specs=spec, out_specs=spec)
        self._sum: Callable[[jax.Array], jax.Array] = jax.jit(summed)

    @property
    def nbytes(self) -> int:
        """Bytes each rank contributes (float32, padded)."""
        return 4 * self.length

    def reduce(self, flat: jax.Array) -> jax.Array:
        """The summed vector on this process's device (not yet waited for)."""
        local = jax.device_put(flat.reshape(1, 1, self.length), self.device)
        global_array = jax.make_array_from_single_device_arrays(
            (self.pp, self.dp, self.length), self.sharding, [local]
        )
        out = self._sum(global_array)
        mine: jax.Array = out.addressable_data(0).reshape(self.length)
        return mine
