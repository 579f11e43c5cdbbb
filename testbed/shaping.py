"""A node's network bandwidth limited with ``tbf`` in both directions.

``netem`` (added delay and loss) is not in this kernel; a token-bucket rate limit is, and it is
what a degraded link or an oversubscribed fabric does to a collective: the same bytes take
longer. A qdisc shapes only what leaves an interface, so the node's own end (``eth0`` in its
namespace) shapes what it sends and the bridge's end of its veth what it receives.
"""

from __future__ import annotations

from fmdiag.testbed.fabric import Node, run


def _qdisc(mbit: float) -> list[str]:
    # burst: at least one rate-period of bytes (HZ=250 → 4 ms) so the rate is reachable;
    # latency bounds the queue, so a slow link delays packets instead of dropping them all.
    burst = max(64 * 1024, int(mbit * 1e6 / 8 * 0.004))
    return ["root", "tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", "400ms"]


def limit(node: Node, mbit: float) -> None:
    """Limit what ``node`` sends and receives over the fabric to ``mbit`` Mbit/s each way."""
    run([*node.exec_prefix(), "tc", "qdisc", "replace", "dev", node.node_if, *_qdisc(mbit)])
    run(["tc", "qdisc", "replace", "dev", node.host_if, *_qdisc(mbit)])


def unlimit(node: Node) -> None:
    """Back to the unshaped link (removing an absent qdisc is no error)."""
    run([*node.exec_prefix(), "tc", "qdisc", "del", "dev", node.node_if, "root"], check=False)
    run(["tc", "qdisc", "del", "dev", node.host_if, "root"], check=False)


def shaped(node: Node) -> bool:
    """Whether either end of the node's link still carries a tbf qdisc."""
    inside = run([*node.exec_prefix(), "tc", "qdisc", "show", "dev", node.node_if], check=False).stdout
    outside = run(["tc", "qdisc", "show", "dev", node.host_if], check=False).stdout
    return "tbf" in inside or "tbf" in outside
