"""Render one simulated node as the files its exporters read: sysfs, procfs, debugfs, NVML state.

:func:`render_node` writes a :class:`~fmdiag.simulate.nodes.readings.NodeState` under a root directory
in the real file formats, so a collector pointed at ``<root>/sys``, ``<root>/proc`` and
``<root>/sys/kernel/debug`` cannot tell it from a node (docs/node-trees.md lists every file).
This module is the entry point; each part of the tree has its own module:

* :mod:`~fmdiag.simulate.nodes.tree_efa`: EFA (and ConnectX) devices in ``sys/class/infiniband``
  and ``sys/devices``, printed as the kernel's ``sysfs.c`` and the EFA driver print them.
* :mod:`~fmdiag.simulate.nodes.tree_lustre`: the Lustre client's 2.10 ``/proc/fs/lustre`` layout
  or the 2.12+ layout (stats in debugfs, ``rpc_stats`` still in ``/proc``, tunables in
  ``/sys/fs/lustre``), and :func:`lctl_get_param`, what ``lctl get_param`` would print; the
  texts come from :mod:`~fmdiag.simulate.nodes.tree_lustre_stats` (``lprocfs`` stats, read-ahead)
  and :mod:`~fmdiag.simulate.nodes.tree_lustre_rpc` (``rpc_stats`` histograms).
* :mod:`~fmdiag.simulate.nodes.tree_procfs`: ``proc/stat``, ``proc/pressure/*``, ``proc/meminfo``,
  ``proc/uptime`` and per process ``proc/<pid>/{stat,status,statm,io,cmdline,comm}`` in the
  forms psutil parses.
* GPUs: ``nvml/state.json`` (:mod:`fmdiag.exporters.gpu_state_file`), which the exporter's NVML
  stand-in (:mod:`fmdiag.exporters.nvml_stand_in`) serves.

Rendering again over the same root is how ``--live`` advances a node: every file is replaced
atomically (:mod:`~fmdiag.simulate.nodes.tree_write`), a new directory (device, mount, process)
appears whole by a rename, and whatever is no longer in the state (a removed EFA device, an
unmounted filesystem, an exited process) disappears, so fault injection needs no special
code. A hidden ``.nodetree.json`` (:mod:`~fmdiag.simulate.nodes.tree_history`) keeps what a real
kernel remembers between reads (boot time, PSI averages, the RPC histograms a single
snapshot cannot give); one root must be rendered by one writer at a time.
"""

from __future__ import annotations

from pathlib import Path

from fmdiag.exporters import gpu_state_file
from fmdiag.simulate.nodes.readings import NodeState
from fmdiag.simulate.nodes.tree_efa import render_rdma
from fmdiag.simulate.nodes.tree_history import History
from fmdiag.simulate.nodes.tree_lustre import render_lustre
from fmdiag.simulate.nodes.tree_procfs import DEFAULT_MEM_TOTAL_BYTES, boot_time, render_procfs
from fmdiag.simulate.nodes.tree_write import TreeWriter


def render_node(
    state: NodeState,
    root: Path,
    *,
    efa_srd: bool | None = None,
    lustre_layout: str | None = None,
    mellanox: int = 0,
    boot_time_s: float | None = None,
    mem_total_bytes: int = DEFAULT_MEM_TOTAL_BYTES,
) -> None:
    """Write (or bring up to date) the node tree of ``state`` under ``root``.

    ``efa_srd`` forces every EFA device with (True) or without (False) the SRD network
    counters; None keeps each device's ``srd_counters``. ``lustre_layout`` ("2.10", "2.14",
    ...) overrides every filesystem's ``version``. ``mellanox`` adds that many ConnectX
    InfiniBand devices (vendor 0x15b3) next to the EFA devices. ``boot_time_s`` fixes the
    kernel boot time; by default it is chosen at the first render of a root (consistent
    with the CPU time and process start times) and kept for later renders.
    Call it again with the next snapshot to advance a live tree; one writer per root.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tree = TreeWriter(root)
    tree.clean_staging()
    history = History.load(root)
    boot = boot_time(state, history, boot_time_s)
    history.boot_time_s = boot

    render_rdma(tree, state, efa_srd=efa_srd, mellanox=mellanox)
    render_lustre(tree, state.lustre, state.time_s, float(boot) + 60.0, history, lustre_layout)
    render_procfs(tree, state, history, boot, mem_total_bytes)
    doc = gpu_state_file.GpuStateDoc(time_s=state.time_s, gpus=list(state.gpus), hostname=state.hostname)
    tree.write(
        root / gpu_state_file.RELATIVE_PATH, gpu_state_file.dumps(doc)
    )  # staged: no temp file in nvml/
    history.save(tree)
    tree.clean_staging()
