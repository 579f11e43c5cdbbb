"""The Lustre client's parameter files in a node tree, and what ``lctl get_param`` prints.

Up to 2.11 everything lives in ``/proc/fs/lustre``; from 2.12 stats move to debugfs,
``rpc_stats`` and a few seq-file tunables stay in ``/proc`` and the other tunables move to
``/sys/fs/lustre``. Each mount's instance directories appear and disappear whole, as they
do at mount and unmount.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fmdiag.simulate.nodes.readings import LustreFsState, LustreTargetState
from fmdiag.simulate.nodes.tree_history import History
from fmdiag.simulate.nodes.tree_lustre_rpc import (
    RpcHistory,
    advance_rpc_history,
    format_mdc_rpc_stats,
    format_osc_rpc_stats,
)
from fmdiag.simulate.nodes.tree_lustre_stats import (
    LustreProfile,
    format_llite_stats,
    format_ptlrpc_stats,
    format_read_ahead_stats,
    lustre_profile,
)
from fmdiag.simulate.nodes.tree_write import Link, TreeWriter


def instance_names(fs: LustreFsState) -> dict[str, list[tuple[str, LustreTargetState | None]]]:
    """Client device instances of a mount, by kind: llite, osc (one per OST), mdc (per MDT)."""
    return {
        "llite": [(f"{fs.fsname}-{fs.sbid}", None)],
        "osc": [(f"{fs.fsname}-OST{t.index:04x}-osc-{fs.sbid}", t) for t in fs.osts],
        "mdc": [(f"{fs.fsname}-MDT{t.index:04x}-mdc-{fs.sbid}", t) for t in fs.mdts],
    }


#: Tunables written for every instance (configuration, not measurement: typical defaults).
LUSTRE_TUNABLES: dict[str, dict[str, int]] = {
    "llite": {"max_read_ahead_mb": 64, "max_read_ahead_per_file_mb": 64, "max_read_ahead_whole_mb": 2},
    "osc": {"max_rpcs_in_flight": 8, "max_dirty_mb": 2000, "max_pages_per_rpc": 256, "active": 1},
    "mdc": {"max_rpcs_in_flight": 8, "max_mod_rpcs_in_flight": 7, "max_pages_per_rpc": 256, "active": 1},
}
#: 2.12+ keeps these tunables in /proc (seq files), the rest moved to /sys/fs/lustre.
_PROC_TUNABLES_DEBUGFS_ERA = frozenset({"max_pages_per_rpc"})


@dataclass(frozen=True)
class LustreParam:
    """One Lustre parameter: its ``lctl`` name, its file relative to the root, and its text."""

    name: str
    path: str
    text: str


def lustre_params(
    fs: LustreFsState,
    time_s: float,
    *,
    start_s: float,
    history: Mapping[str, RpcHistory] | None = None,
    layout: str | None = None,
) -> list[LustreParam]:
    """Every parameter a mount exposes, with the file each lives in for its release."""
    profile = lustre_profile(layout or fs.version)
    proc, debug, sysfs = "proc/fs/lustre", "sys/kernel/debug/lustre", "sys/fs/lustre"
    stats_base = proc if profile.layout == "proc" else debug
    hist = history or {}
    out: list[LustreParam] = []
    for kind, insts in instance_names(fs).items():
        for inst, target in insts:

            def add(param: str, text: str, base: str, *, _kind: str = kind, _inst: str = inst) -> None:
                out.append(LustreParam(f"{_kind}.{_inst}.{param}", f"{base}/{_kind}/{_inst}/{param}", text))

            if target is None:
                add("stats", format_llite_stats(fs, profile, time_s, start_s), stats_base)
                add(
                    "read_ahead_stats",
                    format_read_ahead_stats(fs.read_ahead, profile, time_s, start_s),
                    stats_base,
                )
            else:
                add("stats", format_ptlrpc_stats(target.stats, profile, time_s, start_s), stats_base)
                h = hist.get(f"{kind}/{inst}") or advance_rpc_history(None, target, profile)
                fmt = format_osc_rpc_stats if kind == "osc" else format_mdc_rpc_stats
                add("rpc_stats", fmt(target, h, profile, time_s, start_s), proc)
            for name, value in LUSTRE_TUNABLES[kind].items():
                in_proc = profile.layout == "proc" or name in _PROC_TUNABLES_DEBUGFS_ERA
                add(name, f"{value}\n", proc if in_proc else sysfs)
    return out


def _global_params(profile: LustreProfile) -> list[LustreParam]:
    if profile.layout == "proc":
        version = f"lustre: {profile.release}\nkernel: patchless_client\nbuild:  {profile.release}\n"
        return [
            LustreParam("version", "proc/fs/lustre/version", version),
            LustreParam("health_check", "proc/fs/lustre/health_check", "healthy\n"),
        ]
    return [
        LustreParam("version", "sys/fs/lustre/version", f"{profile.release}\n"),
        LustreParam("health_check", "sys/fs/lustre/health_check", "healthy\n"),
    ]


def lctl_get_param(
    states: Sequence[LustreFsState],
    pattern: str,
    *,
    time_s: float | None = None,
    root: Path | None = None,
    show_name: bool = True,
) -> str:
    """What ``lctl get_param <pattern>`` prints for these mounts (``-n`` when not ``show_name``).

    A multi-line value gets a ``name=`` line of its own, a one-line value follows the ``=``,
    and parameters come in name order, as lctl's glob returns them. ``pattern`` globs each
    dot-separated component (``osc.*.rpc_stats``, ``llite.lustrefs-*.stats``). With ``root``,
    rpc_stats histograms match those :func:`render_node` accumulated there; without, they
    hold only what this one snapshot shows. Raises LookupError, with lctl's message, when
    nothing matches.
    """
    now = time.time() if time_s is None else time_s
    history = History.load(root) if root is not None else History()
    start = float(history.boot_time_s) + 60.0 if history.boot_time_s is not None else now - 3600.0
    params: dict[str, str] = {}
    for fs in states:
        for p in lustre_params(fs, now, start_s=start, history=history.rpc):
            params[p.name] = p.text
        for p in _global_params(lustre_profile(fs.version)):
            params.setdefault(p.name, p.text)
    want = pattern.replace("/", ".").split(".")
    out = []
    for name in sorted(params):
        parts = name.split(".")
        if len(parts) != len(want) or not all(
            fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want, strict=True)
        ):
            continue
        text = params[name]
        if not show_name:
            out.append(text)
        elif "\n" in text.rstrip("\n"):
            out.append(f"{name}=\n{text}")
        else:
            out.append(f"{name}={text}")
    if not out:
        raise LookupError(f"error: get_param: param_path '{pattern}': No such file or directory")
    return "".join(out)


def render_lustre(
    tree: TreeWriter,
    filesystems: Sequence[LustreFsState],
    time_s: float,
    start_s: float,
    history: History,
    layout: str | None,
) -> None:
    """Bring the Lustre files under ``tree`` to ``filesystems``, advancing the RPC histograms
    in ``history``; an unmounted filesystem's directories (and emptied bases) disappear.
    """
    files: dict[str, str] = {}
    new_rpc: dict[str, RpcHistory] = {}
    for fs in filesystems:
        profile = lustre_profile(layout or fs.version)
        for kind, insts in instance_names(fs).items():
            for inst, target in insts:
                if target is not None:
                    key = f"{kind}/{inst}"
                    new_rpc[key] = advance_rpc_history(history.rpc.get(key), target, profile)
        for p in lustre_params(fs, time_s, start_s=start_s, history=new_rpc, layout=layout):
            files[p.path] = p.text
        for p in _global_params(profile):
            files.setdefault(p.path, p.text)
    history.rpc = new_rpc
    # Group files by instance directory: each directory appears and disappears whole.
    by_dir: dict[Path, dict[str, str | Link]] = {}
    singles: dict[Path, str] = {}
    for rel, text in files.items():
        parts = Path(rel).parts
        if len(parts) >= 6 and parts[-3] in ("llite", "osc", "mdc"):
            by_dir.setdefault(tree.root / Path(*parts[:-1]), {})[parts[-1]] = text
        else:
            singles[tree.root / rel] = text
    bases = ("proc/fs/lustre", "sys/kernel/debug/lustre", "sys/fs/lustre")
    for base in bases:
        for kind in ("llite", "osc", "mdc"):
            kind_dir = tree.root / base / kind
            tree.prune(kind_dir, [d.name for d in by_dir if d.parent == kind_dir])
    for directory, spec in by_dir.items():
        tree.sync_dir(directory, spec)
    for path, text in singles.items():
        tree.write(path, text)
    for base in bases:
        base_dir = tree.root / base
        for name in ("version", "health_check"):
            if base_dir / name not in singles:
                tree.remove(base_dir / name)
        tree.remove_empty_dirs(base_dir)
        if base_dir.is_dir() and not any(base_dir.iterdir()):
            base_dir.rmdir()
