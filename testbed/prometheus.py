"""A real Prometheus server scraping the test bed's per-node exporters.

It runs in the root namespace on 127.0.0.1 and reaches each node's exporter over the bridge.
Each target carries ``instance="<node name>"``, so what ``fmdiag collect`` writes names nodes the
way the step records do, as a cluster's relabelling to host names would. Every path is given
(config, storage, console folders), so nothing touches ``/etc/prometheus`` or listens beyond
loopback.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

PORT = 9847


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    def __init__(self, workdir: Path, targets: Sequence[tuple[str, str]], interval_s: float = 1.0) -> None:
        """``targets``: (node name, host:port) pairs."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "prometheus.log"
        self.config = workdir / "prometheus.yml"
        interval = f"{int(interval_s * 1000)}ms"
        static = "".join(
            f'      - targets: ["{address}"]\n        labels: {{instance: "{node}"}}\n'
            for node, address in targets
        )
        self.config.write_text(
            f"global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n"
            f"scrape_configs:\n  - job_name: fmdiag\n    static_configs:\n{static}",
            encoding="utf-8",
        )
        self.proc: subprocess.Popen[bytes] | None = None
        for _attempt in range(5):  # the port may be taken between free_port() and bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--storage.tsdb.retention.time=1d",
                        f"--web.console.templates={workdir}/none",
                        f"--web.console.libraries={workdir}/none",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._ready(30.0):
                return
            self.stop()
        raise RuntimeError(f"Prometheus did not become ready; see {self.log_path}")

    def _ready(self, timeout_s: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return True
            time.sleep(0.1)
        return False

    def targets_up(self) -> dict[str, bool]:
        """instance -> whether its last scrape succeeded."""
        import json  # noqa: PLC0415

        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as r:
            doc = json.load(r)
        return {t["labels"].get("instance", ""): t["health"] == "up" for t in doc["data"]["activeTargets"]}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
