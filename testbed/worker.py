"""One rank of the test bed's training job: ``python -m fmdiag.testbed.worker CONFIG.json``.

This module is the process's edge: it limits threads before JAX loads, turns SIGTERM into a
clean stop, and turns any failure into one line on stderr and a non-zero exit status (the
orchestrator shows a failed rank's last log line). The work itself is in ``trainer``.

JAX is imported only inside ``main``: the loader's worker processes are started with
"spawn", which re-imports this module in every one of them, and they must not load XLA.

Exit status: 0 after the configured steps; 1 on an error; 2 on a bad command line or config;
143 when stopped by SIGTERM (130 for SIGINT).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType

from fmdiag.testbed.worker_config import WorkerConfig

#: Several ranks share a few cores: one thread each for XLA's CPU kernels and for numpy's BLAS.
_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
#: Set to 1 for a full traceback on stderr before the one-line error.
TRACEBACK_ENV = "FMDIAG_TESTBED_TRACEBACK"


class StopSignalError(Exception):
    """SIGTERM arrived: unwind, closing the loader, the tracer and the connections."""


def limit_threads(env: dict[str, str] | os._Environ[str]) -> None:
    """Before JAX or numpy load: single-threaded kernels (the loader's workers inherit it)."""
    for name, value in _THREAD_ENV.items():
        env.setdefault(name, value)
    flags = env.get("XLA_FLAGS", "").split()
    given = {flag.split("=")[0] for flag in flags}  # the caller's own settings win
    env["XLA_FLAGS"] = " ".join([*flags, *(f for f in _XLA_FLAGS if f.split("=")[0] not in given)])


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise StopSignalError(f"stopped by signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    prefix = "fmdiag.testbed.worker"
    if len(args) != 1 or args[0].startswith("-"):
        print(f"usage: python -m {prefix} CONFIG.json", file=sys.stderr)
        return 2
    try:
        cfg = WorkerConfig.from_json(args[0])
    except (ValueError, TypeError) as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
    prefix = f"{prefix} rank {cfg.rank}"
    limit_threads(os.environ)
    signal.signal(signal.SIGTERM, _on_sigterm)
    from fmdiag.testbed import trainer  # noqa: PLC0415 (after the thread limits; see the docstring)

    def log(message: str) -> None:
        print(f"{prefix}: {message}", flush=True)

    try:
        summary = trainer.run(cfg, log)
    except (StopSignalError, KeyboardInterrupt) as exc:
        print(f"{prefix}: {exc or 'interrupted'}", file=sys.stderr, flush=True)
        return 143 if isinstance(exc, StopSignalError) else 130
    except Exception as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            traceback.print_exc()
        print(f"{prefix}: error: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr, flush=True)
        return 1
    loss = (
        "no loss on this stage"
        if math.isnan(summary.last_loss)
        else f"loss {summary.first_loss:.3f} -> {summary.last_loss:.3f}"
    )
    log(f"done: {summary.steps} steps, {loss}")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # After a failure, jax.distributed's and gloo's exit handlers may wait on ranks that are
    # gone; the rank's own resources are already released, so leave at once.
    if code != 0:
        os._exit(code)
    sys.exit(code)
