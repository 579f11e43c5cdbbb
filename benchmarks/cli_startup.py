"""Start-up cost of the `fmdiag` CLI, now and before: wall time and Python's own import time.

For each command (``--help``, ``exporter --help``, ``--version``, and ``analyze DUMP --json
--hta-compatible`` on a one-rank, two-step Kineto trace: the fixed cost of an analysis, which is
most of its time on small traces) and each interpreter (this one, with the current tree
installed, and optionally a BEFORE one with an older fmdiag installed in its own virtual
environment), runs ``python -m fmdiag ARGS`` N times plainly for the wall time, and N times under
``-X importtime`` for the import totals: the summed cumulative time of the top-level imports and
the five costliest of them. Wall time is taken from the plain runs because ``-X importtime``
slows imports down. Prints medians and before/after ratios; no assertions (machines are noisy).

Bytecode: an installed fmdiag has its ``.pyc`` files (pip compiles them), a checkout run under
``PYTHONDONTWRITEBYTECODE=1`` compiles every module on every run (~0.1 s of an analysis' start-up
on a 2-CPU machine). So by default each interpreter runs with a bytecode cache of its own
(``PYTHONPYCACHEPREFIX`` in a temporary folder, one unmeasured run first);
``--no-bytecode-cache`` measures the environment as it is.

A BEFORE interpreter for git HEAD::

    mkdir /tmp/old && git archive HEAD | tar -x -C /tmp/old
    python3 -m venv /tmp/venv-old && /tmp/venv-old/bin/pip install /tmp/old
    python benchmarks/cli_startup.py --before-python /tmp/venv-old/bin/python

Both interpreters run from an empty working directory, so the checkout's ``fmdiag/`` folder
cannot shadow what each has installed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: ``{dump}`` is replaced by a small Kineto dump made for the run.
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("--help",),
    ("exporter", "--help"),
    ("--version",),
    ("analyze", "{dump}", "--json", "--hta-compatible"),
)
# "import time:  self [us] | cumulative | name", nested imports indented under the name column.
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


@dataclass
class Result:
    wall_s: float
    imports_s: float
    top: list[tuple[str, float]]  # the costliest top-level imports of the median run, seconds


def _import_times(stderr: str) -> tuple[float, list[tuple[str, float]]]:
    top: list[tuple[str, float]] = []
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if match and len(match[3]) == 1:  # top level: one space after the bar
            top.append((match[4], int(match[2]) / 1e6))
    return sum(t for _, t in top), sorted(top, key=lambda item: -item[1])[:5]


def measure(python: str, args: tuple[str, ...], runs: int, cwd: str, env: dict[str, str]) -> Result:
    walls: list[float] = []
    imports: list[tuple[float, list[tuple[str, float]]]] = []
    # unmeasured: fills the bytecode cache (when there is one) and the page cache
    subprocess.run([python, "-m", "fmdiag", *args], cwd=cwd, capture_output=True, check=True, env=env)
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, "-m", "fmdiag", *args], cwd=cwd, capture_output=True, check=True, env=env)
        walls.append(time.perf_counter() - t0)
        out = subprocess.run(
            [python, "-X", "importtime", "-m", "fmdiag", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        imports.append(_import_times(out.stderr))
    imports.sort(key=lambda item: item[0])
    total, top = imports[len(imports) // 2]
    return Result(statistics.median(walls), total, top)


def make_dump(dump: Path) -> Path:
    """A one-rank Kineto dump of two steps (tests/analyze/kineto_builder.py): a small analysis."""
    sys.path.insert(0, str(ROOT / "tests"))
    from analyze import kineto_builder as kb

    kb.write(dump / "kineto" / "rank0.json.gz", kb.build(kb.Options(steps=2)))
    return dump


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=10, help="runs per command and mode (default 10)")
    parser.add_argument("--before-python", help="interpreter with the BEFORE fmdiag installed")
    parser.add_argument(
        "--after-python", default=sys.executable, help="interpreter with the current tree (default: this one)"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run in the environment as it is (default: each interpreter with a bytecode cache of its own)",
    )
    opts = parser.parse_args()
    trees = [("after", opts.after_python)]
    if opts.before_python:
        trees.insert(0, ("before", opts.before_python))

    with tempfile.TemporaryDirectory() as cwd:
        dump = make_dump(Path(cwd) / "dump")
        commands = [tuple(a.replace("{dump}", str(dump)) for a in args) for args in COMMANDS]
        results = {}
        for label, python in trees:
            env = dict(os.environ)
            if not opts.no_bytecode_cache:
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                env["PYTHONPYCACHEPREFIX"] = str(Path(cwd) / f"pycache-{label}")
            for args in commands:
                results[(label, args)] = measure(python, args, opts.runs, cwd, env)

    cache = "as the environment is" if opts.no_bytecode_cache else "with a bytecode cache"
    print(f"median of {opts.runs} runs ({os.cpu_count()} CPUs, {cache});")
    print("imports: summed cumulative -X importtime of top-level modules")
    for args in commands:
        command = "fmdiag " + " ".join(args).replace(str(dump), "DUMP")
        print(f"\n{command}")
        for label, _ in trees:
            r = results[(label, args)]
            costliest = ", ".join(f"{name} {t * 1e3:.0f} ms" for name, t in r.top[:3])
            wall, imports = f"{r.wall_s * 1e3:7.1f} ms", f"{r.imports_s * 1e3:7.1f} ms"
            print(f"  {label:<6}  wall {wall}  imports {imports}  ({costliest})")
        if opts.before_python:
            before, after = results[("before", args)], results[("after", args)]
            print(
                f"  before/after: wall x{before.wall_s / after.wall_s:.1f},"
                f" imports x{before.imports_s / after.imports_s:.1f}"
            )


if __name__ == "__main__":
    main()
