"""The sidecar ``<root>/.nodetree.json``: what a kernel remembers between reads.

A real node keeps its boot time, decays its PSI averages and accumulates RPC histograms; a
tree rendered from independent snapshots must carry those from one render to the next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fmdiag.simulate.nodes.tree_lustre_rpc import RpcHistory
from fmdiag.simulate.nodes.tree_write import TreeWriter

HISTORY_FILE = ".nodetree.json"
HISTORY_VERSION = 1


@dataclass
class History:
    """The sidecar ``<root>/.nodetree.json``: state carried from one render to the next."""

    boot_time_s: int | None = None
    #: resource -> kind -> [total_us at last render, time_s of last render, avg10, avg60, avg300]
    psi: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: "osc/<instance>" or "mdc/<instance>" -> its accumulated histograms
    rpc: dict[str, RpcHistory] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> History:
        try:
            raw = json.loads((root / HISTORY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(raw, dict) or raw.get("version") != HISTORY_VERSION:
            return cls()
        h = cls()
        bt = raw.get("boot_time_s")
        h.boot_time_s = bt if isinstance(bt, int) else None
        psi = raw.get("psi")
        if isinstance(psi, dict):
            h.psi = {
                str(res): {str(kind): [float(x) for x in v] for kind, v in kinds.items() if len(v) == 5}
                for res, kinds in psi.items()
                if isinstance(kinds, dict)
            }
        rpc = raw.get("rpc")
        if isinstance(rpc, dict):
            h.rpc = {str(k): RpcHistory.from_json(v) for k, v in rpc.items() if isinstance(v, dict)}
        return h

    def save(self, tree: TreeWriter) -> None:
        doc = {
            "version": HISTORY_VERSION,
            "boot_time_s": self.boot_time_s,
            "psi": self.psi,
            "rpc": {k: v.to_json() for k, v in sorted(self.rpc.items())},
        }
        tree.write(tree.root / HISTORY_FILE, json.dumps(doc, sort_keys=True) + "\n")
