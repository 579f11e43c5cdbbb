"""Can this machine host the test bed? One line saying why not, before anything is made.

The test bed needs root (namespaces, qdiscs, cgroups), iproute2's ``ip`` and ``tc``, network
namespaces and the ``tbf`` qdisc in the kernel, cgroup v1's cpu and blkio controllers, the
Prometheus server, and JAX. Each is probed for real (a throwaway namespace with a qdisc on its
loopback), because a kernel without them fails later in ways that say much less.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

from fmdiag.testbed import cgroups
from fmdiag.testbed.fabric import PREFIX


def problem() -> str | None:
    """Why the test bed cannot run here, in one line, or None."""
    if os.geteuid() != 0:
        return "needs root (it makes network namespaces, qdiscs and cgroups); run it as root"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("prometheus", "prometheus")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: install the Debian package {package}"
    for module in ("jax", "jaxlib"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install 'fmdiag[testbed]'"
    why = cgroups.available()
    if why:
        return why
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            return f"cannot make a network namespace: {made.stderr.strip()}"
        inside = ["ip", "netns", "exec", probe]
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], capture_output=True, check=False)
        tbf = subprocess.run(
            [
                *inside,
                "tc",
                "qdisc",
                "add",
                "dev",
                "lo",
                "root",
                "tbf",
                "rate",
                "10mbit",
                "burst",
                "64kb",
                "latency",
                "100ms",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if tbf.returncode != 0:
            return f"the tbf qdisc is not available in this kernel: {tbf.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None
