"""The test bed's "nodes": one network namespace per node, joined by a Linux bridge.

Why namespaces: ranks of different nodes must talk over a link that a fault can slow (a
``tbf`` qdisc), while ranks of one node talk over the namespace's loopback, as GPUs of one
node talk over NVLink. Everything here is named after the orchestrating process
(``fmtb<pid>``), so a run that was SIGKILLed is recognised and removed by the next run
(:func:`remove_stale`), and nothing belonging to the machine or another live run is touched.

Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking): ``198.18.<pid % 256>.0/24``, the
bridge at ``.1`` and node ``i`` at ``.11 + i``. Nothing outside these namespaces is addressed.

Gloo finds its own address from the host name, which in a namespace is still the machine's;
``ip netns exec`` bind-mounts ``/etc/netns/<ns>/hosts`` over ``/etc/hosts``, so that file maps the
host name to the node's address and gloo uses the bridge.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "fmtb"
NETNS_ETC = Path("/etc/netns")
_OWNED = re.compile(rf"^{PREFIX}(\d+)")


class FabricError(RuntimeError):
    """A namespace, link or qdisc could not be made; the message names the command."""


def run(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise FabricError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Node:
    index: int
    name: str
    netns: str
    address: str
    #: The bridge's end of the node's veth pair (in the root namespace) and the node's end.
    host_if: str
    node_if: str = "eth0"

    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it "on the node"."""
        return ["ip", "netns", "exec", self.netns]


@dataclass
class Fabric:
    """Namespaces, veths and the bridge of one run; :meth:`close` removes them all, idempotently."""

    owner: int = field(default_factory=os.getpid)
    nodes: list[Node] = field(default_factory=list)
    made: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"{PREFIX}{self.owner}"

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def subnet_octet(self) -> int:
        return self.owner % 256

    @property
    def bridge_address(self) -> str:
        return f"198.18.{self.subnet_octet}.1"

    def up(self, node_names: Sequence[str]) -> list[Node]:
        """Make the bridge and one namespace per node; on any failure, undo what was made."""
        if len(node_names) > 200:
            raise FabricError(f"{len(node_names)} nodes: at most 200 fit the /24 a run uses")
        try:
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self.made.append(("link", self.bridge))
            run(["ip", "addr", "add", f"{self.bridge_address}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            for i, name in enumerate(node_names):
                self.nodes.append(self._add_node(i, name))
        except BaseException:
            self.close()
            raise
        return self.nodes

    def _add_node(self, index: int, name: str) -> Node:
        node = Node(
            index=index,
            name=name,
            netns=f"{self.tag}-{name}",
            address=f"198.18.{self.subnet_octet}.{11 + index}",
            host_if=f"{self.tag}v{index}",
        )
        run(["ip", "netns", "add", node.netns])
        self.made.append(("netns", node.netns))
        etc = NETNS_ETC / node.netns
        etc.mkdir(parents=True, exist_ok=True)
        self.made.append(("etc", str(etc)))
        host = socket.gethostname()
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{node.address}\t{host} {name}\n", encoding="utf-8")
        run(
            [
                "ip",
                "link",
                "add",
                node.host_if,
                "type",
                "veth",
                "peer",
                "name",
                node.node_if,
                "netns",
                node.netns,
            ]
        )
        self.made.append(("link", node.host_if))
        run(["ip", "link", "set", node.host_if, "master", self.bridge])
        run(["ip", "link", "set", node.host_if, "up"])
        inside = node.exec_prefix()
        run([*inside, "ip", "addr", "add", f"{node.address}/24", "dev", node.node_if])
        run([*inside, "ip", "link", "set", node.node_if, "up"])
        run([*inside, "ip", "link", "set", "lo", "up"])
        return node

    def close(self) -> list[str]:
        """Remove everything this run made, newest first; returns what could not be removed."""
        left: list[str] = []
        while self.made:
            kind, name = self.made.pop()
            if not _remove(kind, name):
                left.append(f"{kind} {name}")
        self.nodes.clear()
        return left


def _remove(kind: str, name: str) -> bool:
    if kind == "link":
        # Deleting one end of a veth deletes the pair; deleting a namespace deletes its ends.
        if run(["ip", "link", "show", name], check=False).returncode != 0:
            return True
        return run(["ip", "link", "del", name], check=False).returncode == 0
    if kind == "netns":
        if not Path("/run/netns", name).exists():
            return True
        return run(["ip", "netns", "del", name], check=False).returncode == 0
    if kind == "etc":
        shutil.rmtree(name, ignore_errors=True)
        return not Path(name).exists()
    raise ValueError(kind)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(*, include_live: bool = False) -> list[tuple[str, str]]:
    """(kind, name) of test-bed namespaces, links and /etc/netns folders on this machine, of dead
    runs only unless ``include_live``."""
    found: list[tuple[str, str]] = []

    def owned(name: str) -> bool:
        match = _OWNED.match(name)
        return match is not None and (include_live or not _alive(int(match.group(1))))

    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        found += [("netns", p.name) for p in sorted(netns_dir.iterdir()) if owned(p.name)]
    links = run(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            name = parts[1].strip().split("@", 1)[0]
            if owned(name):
                found.append(("link", name))
    if NETNS_ETC.is_dir():
        found += [("etc", str(p)) for p in sorted(NETNS_ETC.iterdir()) if owned(p.name)]
    return found


def remove_stale() -> list[str]:
    """Remove what SIGKILLed runs left behind (their owner pid is gone); returns what was removed."""
    removed = []
    for kind, name in leftovers():
        if _remove(kind, name):
            removed.append(f"{kind} {name}")
    return removed
