"""``python -m fmdiag.testbed``: list the scenarios, or run one into a trace dump.

Kept out of the ``fmdiag`` command on purpose: the test bed needs root, JAX and a kernel with
namespaces, and it is a judge of the product, not part of it (nothing in the product imports it).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import click

from fmdiag.testbed.scenarios import SCENARIOS


def _list() -> None:
    for sc in SCENARIOS.values():
        needs = f" (needs {sc.min_nodes}+ nodes)" if sc.min_nodes > 1 else ""
        click.echo(f"{sc.name}{needs}")
        click.echo(textwrap.fill(sc.description, 96, initial_indent="    ", subsequent_indent="    "))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--list", "list_", is_flag=True, help="Describe the scenarios and exit.")
@click.option("--scenario", type=click.Choice(sorted(SCENARIOS)), default=None, help="Scenario to run.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Dump directory (new or empty).",
)
@click.option("--nodes", type=click.IntRange(1, 16), default=2, show_default=True, help="Nodes (namespaces).")
@click.option(
    "--ranks-per-node", type=click.IntRange(1, 8), default=2, show_default=True, help="Ranks per node."
)
@click.option(
    "--steps", type=click.IntRange(5, 100_000), default=40, show_default=True, help="Training steps."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: data, fault targets.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=900.0,
    show_default=True,
    help="Give up after this many seconds.",
)
@click.option("--keep-work", is_flag=True, help="Keep the data set, checkpoints and Prometheus data.")
def main(
    list_: bool,
    scenario: str | None,
    out: Path | None,
    nodes: int,
    ranks_per_node: int,
    steps: int,
    seed: int,
    timeout_s: float,
    keep_work: bool,
) -> None:
    """Run a real multi-process JAX training job in network namespaces with a real fault, and write
    an ordinary trace dump (steps/, metrics/ through Prometheus, jax/, truth.json) to --out."""
    if list_:
        _list()
        return
    if scenario is None or out is None:
        raise click.UsageError("give --list, or --scenario and --out")
    from fmdiag.testbed import preflight  # noqa: PLC0415

    why = preflight.problem()
    if why:
        click.echo(f"fmdiag.testbed: {why}", err=True)
        sys.exit(1)
    from fmdiag.testbed import run as run_mod  # noqa: PLC0415

    opts = run_mod.Options(
        scenario=SCENARIOS[scenario],
        out=out,
        nodes=nodes,
        ranks_per_node=ranks_per_node,
        steps=steps,
        seed=seed,
        timeout_s=timeout_s,
        keep_work=keep_work,
    )
    try:
        result = run_mod.run(opts)
    except (run_mod.RunError, OSError, RuntimeError) as exc:
        click.echo(f"fmdiag.testbed: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("fmdiag.testbed: interrupted; everything it made was removed", err=True)
        sys.exit(130)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.truth["class_counts"].items()))
    times = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    click.echo(f"{result.out}: {scenario}, steps by class: {counts}")
    click.echo(f"took {times}; analyse it with: fmdiag analyze {result.out}")
