"""One step of one pipeline stage: its micro-batches in 1F1B order, with each phase timed.

With one stage this is plain gradient accumulation (forward, backward, forward, backward...).
With several, stage ``s`` of ``p`` runs ``p - s - 1`` warm-up forwards, then alternates one
forward and one backward, then drains the remaining backwards (PipeDream-Flush / Megatron's
1F1B), receiving activations from the previous stage and gradients from the next.

Time blocked in a receive is ``comm_exposed``: it is waiting for the neighbour, exactly what a
real per-op timing of a pipeline receive includes, and what makes pipeline bubbles and an
unbalanced stage visible in the step records. Compute is timed to ``block_until_ready``, since
JAX dispatch returns before the work is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fmdiag.steptrace import Step
from fmdiag.testbed.model import Params, StageProgram, wait
from fmdiag.testbed.p2p import Link


def schedule(stages: int, stage: int, micro_batches: int) -> list[tuple[str, int]]:
    """("F" | "B", micro-batch) in the order this stage runs them (1F1B)."""
    warmup = min(stages - stage - 1, micro_batches)
    ops = [("F", i) for i in range(warmup)]
    forward, backward = warmup, 0
    while forward < micro_batches:
        ops.append(("F", forward))
        forward += 1
        ops.append(("B", backward))
        backward += 1
    ops.extend(("B", i) for i in range(backward, micro_batches))
    return ops


class StageStep:
    """Runs a step's micro-batches through this stage; returns the flat, padded gradient."""

    def __init__(self, program: StageProgram, *, prev: Link | None, next_stage: Link | None) -> None:
        self.program = program
        self.prev, self.next = prev, next_stage
        shape = program.shape
        self.last = shape.is_last(program.stage)

    def run(
        self,
        step: int,
        params: Params,
        inputs: Sequence[np.ndarray[Any, Any]],
        targets: Sequence[np.ndarray[Any, Any]],
        record: Step,
    ) -> tuple[jax.Array, list[jax.Array]]:
        """(flat gradient, the micro-batch losses on the last stage, else [])."""
        micro = len(inputs)
        prog = self.program
        pending: dict[int, Any] = {}
        losses: list[jax.Array] = []
        grads: Params | None = None
        scale = np.asarray(1.0 / micro, np.float32)  # the step's loss is the micro-batch mean
        for op, i in schedule(prog.shape.stages, prog.stage, micro):
            if op == "F":
                if self.prev is not None:
                    with record.phase("comm_exposed"):
                        x: Any = self.prev.recv(f"act/{step}/{i}")
                else:
                    x = inputs[i]
                with record.phase("forward"):
                    out, pending[i] = prog.forward(params, x, targets[i] if self.last else None)
                    out.block_until_ready()
                    if self.next is not None:
                        self.next.send(f"act/{step}/{i}", np.asarray(out))
                if self.last:
                    losses.append(out)
                continue
            if self.next is not None:
                with record.phase("comm_exposed"):
                    cotangent: Any = self.next.recv(f"grad/{step}/{i}")
            else:
                cotangent = scale
            with record.phase("backward"):
                if grads is None:
                    grads = prog.zero_grads(params)
                grads, input_grad = prog.backward(pending.pop(i), cotangent, grads)
                wait(grads)
                if self.prev is not None:
                    self.prev.send(f"grad/{step}/{i}", np.asarray(input_grad))
        assert grads is not None and not pending, "1F1B schedule left micro-batches unfinished"
        with record.phase("backward"):  # packing the gradient for the all-reduce
            flat = prog.flatten(grads)
            flat.block_until_ready()
        return flat, losses
