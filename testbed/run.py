"""One test-bed run, end to end: nodes up, exporters and Prometheus, the job, faults, the dump.

The order matters for what the dump shows: exporters and Prometheus are scraping before the
first rank starts, faults due "from the start" are applied once every rank has compiled (so a
throttled rank's compile does not stretch the start-up, and no step record holds compile time),
and the dump is made the way a user makes one: ``fmdiag collect`` against Prometheus, with
``--steps-from`` each node's spool. Whatever happens (an error, Ctrl-C, SIGTERM, a timeout),
``finally`` stops every process and removes every namespace, qdisc and cgroup this run made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fmdiag import dumpformat, steprecord
from fmdiag.testbed import cgroups, dataset, fabric
from fmdiag.testbed import truth as truth_mod
from fmdiag.testbed.faults import Injector, RankProcess, pick_targets
from fmdiag.testbed.prometheus import PORT, PrometheusServer
from fmdiag.testbed.scenarios import JOB_CONDITIONS, Kind, Scenario
from fmdiag.testbed.worker_config import WorkerConfig

COORDINATOR_PORT = 12340
P2P_PORT = 12400
#: Where the run keeps what is not part of the dump (logs, run.json; work/ while it runs).
TESTBED_DIR = "testbed"


class RunError(RuntimeError):
    """The run failed; the message says where to look (a log file, a rank)."""


@dataclass
class Options:
    scenario: Scenario
    out: Path
    nodes: int = 2
    ranks_per_node: int = 2
    steps: int = 40
    seed: int = 0
    timeout_s: float = 900.0
    scrape_interval_s: float = 1.0
    keep_work: bool = False
    #: Worker settings over the defaults (the scenario's own come on top).
    job: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    out: Path
    seconds: dict[str, float]
    truth: dict[str, Any]


def _log_default(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def layout(opts: Options) -> list[dict[str, Any]]:
    """Every rank's place: node, local rank, pipeline stage and data-parallel index.

    With two stages the first half of the nodes runs stage 0 and the second half stage 1, so
    activations cross the fabric between nodes as in a real pipeline across nodes."""
    pp = opts.scenario.pp
    world = opts.nodes * opts.ranks_per_node
    stage_nodes = opts.nodes // pp
    out = []
    for node in range(opts.nodes):
        for local in range(opts.ranks_per_node):
            stage = node // stage_nodes
            out.append(
                {
                    "rank": node * opts.ranks_per_node + local,
                    "node": node_name(node),
                    "node_index": node,
                    "local_rank": local,
                    "pp_rank": stage,
                    "dp_rank": (node % stage_nodes) * opts.ranks_per_node + local,
                    "dp": world // pp,
                }
            )
    return out


def node_name(index: int) -> str:
    return f"node-{index:03d}"


def check(opts: Options) -> None:
    sc = opts.scenario
    if opts.nodes < sc.min_nodes:
        raise RunError(f"scenario {sc.name} needs at least {sc.min_nodes} nodes (--nodes {opts.nodes})")
    if sc.pp > 1 and opts.nodes % sc.pp:
        raise RunError(f"scenario {sc.name}: {sc.pp} pipeline stages need a multiple of {sc.pp} nodes")
    if opts.steps < 5:
        raise RunError(f"--steps {opts.steps}: at least 5")
    if opts.ranks_per_node < 1 or opts.nodes < 1:
        raise RunError("--nodes and --ranks-per-node must be at least 1")


class _Processes:
    """Child processes of the run, each in its own session so a kill reaches its children."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        with log.open("ab") as f:
            self.procs[name] = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )

    def stop(self, names: list[str] | None = None, grace_s: float = 5.0) -> None:
        chosen = [n for n in (names or list(self.procs)) if n in self.procs]
        for name in chosen:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.procs[name].pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for name in chosen:
            proc = self.procs.pop(name)
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            _wait_group_gone(proc.pid, 10.0)


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no process of the group is left (a rank's loader processes die after it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI timeout, ``kill``) unwinds like Ctrl-C, so ``finally`` cleans up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _last_step(path: Path) -> int:
    """The step of the last whole record in a spool file (-1 before the first)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 4096))
            tail = f.read()
    except OSError:
        return -1
    for line in reversed(tail.split(b"\n")[:-1]):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(line)["step"])
    return -1


def run(opts: Options, log: Callable[[str], None] = _log_default) -> Result:
    check(opts)
    sc = opts.scenario
    job = f"tb-{sc.name}-s{opts.seed}"
    out = opts.out.resolve()
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out}: exists and is not empty (the dump goes there)")
    tb = out / TESTBED_DIR
    work, logs = tb / "work", tb / "logs"
    for d in (work, logs):
        d.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t_start = time.monotonic()
    removed = fabric.remove_stale() + cgroups.remove_stale()
    if removed:
        log(f"removed leftovers of earlier runs: {', '.join(removed)}")

    ranks = layout(opts)
    base = WorkerConfig.defaults()
    overrides = {**dict(opts.job), **dict(sc.job)}
    data_dir = work / "data"
    log(f"{sc.name}: writing the input data set to {data_dir}")
    manifest = dataset.write_dataset(
        data_dir,
        shards=max(8, base.loader_workers * max(r["dp"] for r in ranks)) * 2,
        seed=opts.seed,
        seq_len=int(overrides.get("seq_len", base.seq_len)),
        vocab=int(overrides.get("vocab", base.vocab)),
    )
    disk = None
    if any(f.kind in (Kind.INPUT_READ, Kind.CHECKPOINT_WRITE) for f in sc.faults):
        disk = cgroups.disk_of(work)

    fab = fabric.Fabric()
    procs = _Processes()
    prom: PrometheusServer | None = None
    injector: Injector | None = None
    try:
        with _terminate_as_interrupt():
            nodes = fab.up([node_name(i) for i in range(opts.nodes)])
            by_name = {n.name: n for n in nodes}
            seconds["setup"] = time.monotonic() - t_start
            # One exporter per node, inside the node's namespace, serving its ranks' spool.
            spools = {}
            for node in nodes:
                spool = work / "spool" / node.name
                spool.mkdir(parents=True)
                spools[node.name] = spool
                pattern = rf"fmdiag\.testbed\.worker .*/config/{node.name}/"
                procs.start(
                    f"exporter-{node.name}",
                    [
                        *node.exec_prefix(),
                        sys.executable,
                        "-m",
                        "fmdiag",
                        "exporter",
                        f"--web.listen-address={node.address}:{PORT}",
                        "--collector.disable-defaults",
                        "--collector.steps",
                        "--collector.host",
                        f"--collector.steps.spool-dir={spool}",
                        f"--collector.host.process-pattern={pattern}",
                    ],
                    logs / f"exporter-{node.name}.log",
                    env={**os.environ, "NODE_NAME": node.name},
                )
            prom = PrometheusServer(
                work / "prometheus",
                [(n.name, f"{n.address}:{PORT}") for n in nodes],
                opts.scrape_interval_s,
            )
            _wait_targets(prom, [n.name for n in nodes], logs)
            t_job = time.time()

            # The job: one process per rank, in its node's namespace.
            coordinator = f"{by_name[ranks[0]['node']].address}:{COORDINATOR_PORT}"
            go_file = work / "go"
            configs: dict[int, WorkerConfig] = {}
            for r in ranks:
                node = by_name[r["node"]]
                cfg_path = work / "config" / node.name / f"rank{r['rank']:05d}.json"
                cfg_path.parent.mkdir(parents=True, exist_ok=True)
                peer = _pipeline_peer(r, ranks)
                cfg = replace(
                    base,
                    **{k: v for k, v in overrides.items() if k in WorkerConfig.field_names()},
                    job=job,
                    rank=r["rank"],
                    world=len(ranks),
                    local_rank=r["local_rank"],
                    node=node.name,
                    coordinator=coordinator,
                    pp=sc.pp,
                    pp_rank=r["pp_rank"],
                    dp=r["dp"],
                    dp_rank=r["dp_rank"],
                    stage_layers=list(sc.stage_layers) or [base.layers],
                    layers=sum(sc.stage_layers) or base.layers,
                    # one port per listening rank: the ranks of a node share its address
                    p2p_listen=(
                        f"{node.address}:{P2P_PORT + r['local_rank']}" if peer and r["pp_rank"] > 0 else None
                    ),
                    p2p_peer=(
                        f"{by_name[peer['node']].address}:{P2P_PORT + peer['local_rank']}"
                        if peer and r["pp_rank"] == 0
                        else None
                    ),
                    steps=opts.steps,
                    seed=opts.seed,
                    data_dir=str(data_dir),
                    checkpoint_every=sc.checkpoint_every,
                    checkpoint_dir=str(work / "checkpoints"),
                    spool_dir=str(spools[node.name]),
                    trace_dir=str(work / "jax" / f"rank{r['rank']}"),
                    trace_first_step=max(0, opts.steps - 3),
                    trace_steps=3,
                    pid_file=str(work / "pids" / f"rank{r['rank']:05d}.json"),
                    go_file=str(go_file),
                    batch_log=str(work / "batches" / f"rank{r['rank']:05d}.jsonl"),
                )
                cfg.to_json(cfg_path)
                configs[r["rank"]] = cfg
                (work / "pids").mkdir(exist_ok=True)
                (work / "batches").mkdir(exist_ok=True)
                env = {**os.environ, "FMDIAG_JOB": job, "PYTHONUNBUFFERED": "1"}
                procs.start(
                    f"rank{r['rank']}",
                    [*node.exec_prefix(), sys.executable, "-m", "fmdiag.testbed.worker", str(cfg_path)],
                    logs / f"rank{r['rank']:05d}.log",
                    env=env,
                )
            log(f"{sc.name}: {len(ranks)} ranks on {len(nodes)} nodes started")

            targets = pick_targets(sc.faults, ranks, [n.name for n in nodes], opts.seed)
            injector = Injector(nodes, sc.faults, targets, disk=disk)
            deadline = time.monotonic() + opts.timeout_s
            injector.ranks = _wait_ready(configs, ranks, procs, deadline, logs)
            seconds["start"] = time.monotonic() - t_start - seconds["setup"]

            schedule = _schedule(sc, opts.steps)
            _transitions(injector, schedule, -1)
            go_file.write_text("go\n")
            t_steps = time.monotonic()
            spool_files = [spools[r["node"]] / steprecord.file_name(job, r["rank"]) for r in ranks]
            done = -1
            while True:
                finished = _check_ranks(procs, ranks, logs)
                done = max(done, *(_last_step(p) for p in spool_files))
                _transitions(injector, schedule, done)
                if finished:
                    break
                if time.monotonic() > deadline:
                    raise RunError(f"timed out after {opts.timeout_s:.0f} s at step {done}; logs in {logs}")
                time.sleep(0.05)
            seconds["steps"] = time.monotonic() - t_steps
            batches_made = _batches_made(work / "batches")
            injector.close()
            # Two more scrapes, so the last steps are in Prometheus before collecting.
            time.sleep(2 * opts.scrape_interval_s + 0.5)
            t_collect = time.monotonic()
            _collect(prom.url, job, t_job - 5, time.time() + 1, out, list(spools.values()), logs)
            _copy_traces(work / "jax", out / dumpformat.JAX_DIR)
            seconds["collect"] = time.monotonic() - t_collect

            records = [
                rec
                for p in dumpformat.DumpLayout(out).step_files()
                for rec in steprecord.read_file(p).records
            ]
            truth = truth_mod.build(
                scenario=sc,
                job=job,
                seed=opts.seed,
                steps_total=opts.steps,
                records=records,
                targets=targets,
                events=injector.events,
                ranks=ranks,
                parameters={
                    "nodes": opts.nodes,
                    "ranks_per_node": opts.ranks_per_node,
                    "steps": opts.steps,
                    "pp": sc.pp,
                    "stage_layers": list(sc.stage_layers),
                    "checkpoint_every": sc.checkpoint_every,
                    "worker": {k: v for k, v in asdict(configs[0]).items() if k in _WORKLOAD_KEYS},
                    "dataset": manifest,
                    "scrape_interval_s": opts.scrape_interval_s,
                    "ranks": ranks,
                },
                batches_made=batches_made,
            )
            (out / dumpformat.TRUTH_FILE).write_text(dumpformat.dump_truth(truth), encoding="utf-8")
    finally:
        if injector is not None:
            with contextlib.suppress(Exception):
                injector.close()
        procs.stop()
        if prom is not None:
            prom.stop()
        left = fab.close() + cgroups.remove_owned(os.getpid())
        if not opts.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        if left:
            log(f"warning: could not remove {', '.join(left)}")
    seconds["total"] = time.monotonic() - t_start
    (tb / "run.json").write_text(
        json.dumps(
            {
                "scenario": sc.name,
                "job": job,
                "nodes": opts.nodes,
                "ranks_per_node": opts.ranks_per_node,
                "steps": opts.steps,
                "seed": opts.seed,
                "seconds": {k: round(v, 2) for k, v in seconds.items()},
                "fault_events_ns": injector.events if injector else [],
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    return Result(out=out, seconds=seconds, truth=truth)


_WORKLOAD_KEYS = frozenset(
    {
        "vocab",
        "d_model",
        "heads",
        "layers",
        "seq_len",
        "batch",
        "micro_batches",
        "seq_buckets",
        "loader_workers",
        "prefetch",
        "decode_rounds",
        "stage_layers",
    }
)


def _pipeline_peer(r: Mapping[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The rank of the other stage with the same data-parallel index (2 stages)."""
    for other in ranks:
        if other["dp_rank"] == r["dp_rank"] and other["pp_rank"] != r["pp_rank"]:
            return other
    return None


def _schedule(sc: Scenario, steps: int) -> list[tuple[int, int, str]]:
    """(before step, fault index, "on"/"off") transitions, in step order."""
    out = []
    for i, fault in enumerate(sc.faults):
        if fault.kind in JOB_CONDITIONS:
            continue
        for a, b in fault.windows(steps):
            out.append((a, i, "on"))
            if b < steps:
                out.append((b, i, "off"))
    return sorted(out)


def _transitions(injector: Injector, schedule: list[tuple[int, int, str]], done: int) -> None:
    """Apply what is due before step ``done + 1``; removes happen before applies at one step."""
    due = [t for t in schedule if t[0] <= done + 1]
    for t in sorted(due, key=lambda t: (t[0], t[2] == "on")):
        schedule.remove(t)
        (injector.apply if t[2] == "on" else injector.remove)(t[1])


def _wait_targets(prom: PrometheusServer, names: list[str], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            up = prom.targets_up()
            if all(up.get(n) for n in names):
                return
        time.sleep(0.25)
    raise RunError(f"exporters not scraped within 60 s; see {logs}/exporter-*.log")


def _check_ranks(procs: _Processes, ranks: list[dict[str, Any]], logs: Path) -> bool:
    """True when every rank exited 0; a rank that failed fails the run, naming its log."""
    finished = True
    for r in ranks:
        proc = procs.procs.get(f"rank{r['rank']}")
        if proc is None:
            continue
        code = proc.poll()
        if code is None:
            finished = False
        elif code != 0:
            log = logs / f"rank{r['rank']:05d}.log"
            raise RunError(f"rank {r['rank']} on {r['node']} exited with status {code}: {_tail(log)}")
    return finished


def _tail(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return f"(no log at {path})"
    return f"{lines[-1] if lines else '(empty log)'} (log: {path})"


def _wait_ready(
    configs: Mapping[int, WorkerConfig],
    ranks: list[dict[str, Any]],
    procs: _Processes,
    deadline: float,
    logs: Path,
) -> list[RankProcess]:
    """Every rank's pids once it has compiled and waits for the go file."""
    found: dict[int, RankProcess] = {}
    while len(found) < len(ranks):
        _check_ranks(procs, ranks, logs)
        for r in ranks:
            if r["rank"] in found:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                doc = json.loads(Path(configs[r["rank"]].pid_file).read_text())
                if doc.get("ready"):
                    found[r["rank"]] = RankProcess(
                        rank=r["rank"],
                        node=r["node"],
                        local_rank=r["local_rank"],
                        pp_rank=r["pp_rank"],
                        dp_rank=r["dp_rank"],
                        pid=int(doc["pid"]),
                        loader_pids=tuple(int(p) for p in doc["loader_pids"]),
                    )
        if time.monotonic() > deadline:
            raise RunError(
                f"ranks {sorted(set(c for c in configs) - set(found))} never became ready; logs in {logs}"
            )
        time.sleep(0.1)
    return [found[r["rank"]] for r in ranks]


def _collect(url: str, job: str, start: float, end: float, out: Path, spools: list[Path], logs: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "fmdiag",
        "collect",
        "--prometheus",
        url,
        "--job",
        job,
        "--start",
        f"{start:.3f}",
        "--end",
        f"{end:.3f}",
        "--out",
        str(out),
        "--step",
        "1s",
    ]
    for spool in spools:
        cmd += ["--steps-from", str(spool)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    (logs / "collect.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise RunError(f"fmdiag collect failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _batches_made(folder: Path) -> dict[int, list[int]]:
    """step -> when each rank's batch for it was ready (the ranks' batch logs)."""
    out: dict[int, list[int]] = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                doc = json.loads(line)
                out.setdefault(int(doc["step"]), []).append(int(doc["made_ns"]))
    return out


def _copy_traces(src: Path, dst: Path) -> None:
    if not src.is_dir():
        return
    for rank_dir in sorted(src.iterdir()):
        if rank_dir.is_dir() and any(rank_dir.rglob("*.trace.json.gz")):
            shutil.copytree(rank_dir, dst / rank_dir.name)
