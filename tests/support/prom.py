"""Start and stop a real Prometheus server for tests, and query it over HTTP.

Every path is explicit (config, storage, console dirs) and it listens on 127.0.0.1 only, as
TOOLCHAIN.md prescribes; each server gets its own storage directory. Reusable by any test
that needs Prometheus: ``from support import prom``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for programs that cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """A Prometheus server scraping ``targets`` (host:port) every ``scrape_interval``."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        scrape_interval: str = "1s",
        job: str = "fmdiag",
        metrics_path: str = "/metrics",
        extra_scrape_config: str = "",
        extra_jobs: str = "",
        start_timeout_s: float = 30.0,
    ) -> None:
        """``extra_scrape_config`` is added to the main job; ``extra_jobs`` are more
        ``scrape_configs`` entries (YAML list items, indented two spaces)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.storage = workdir / "data"
        self.config = workdir / "prometheus.yml"
        target_list = ", ".join(f'"{t}"' for t in targets)
        self.config.write_text(
            "global:\n"
            f"  scrape_interval: {scrape_interval}\n"
            f"  evaluation_interval: {scrape_interval}\n"
            "scrape_configs:\n"
            f"  - job_name: {job}\n"
            f"    metrics_path: {metrics_path}\n"
            f"    scrape_timeout: {scrape_interval}\n"
            f"{extra_scrape_config}"
            f"    static_configs:\n      - targets: [{target_list}]\n"
            f"{extra_jobs}"
        )
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        for _attempt in range(5):  # the port can be taken between free_port() and bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [
                        PROMETHEUS,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={self.storage}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--storage.tsdb.retention.time=1h",
                        f"--web.console.templates={workdir}/none",
                        f"--web.console.libraries={workdir}/none",
                        "--web.enable-lifecycle",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(start_timeout_s):
                return
            self.stop()
        raise PrometheusError("Prometheus did not become ready:\n" + self.log())

    def _wait_ready(self, timeout_s: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.load(r)
        if doc.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {doc}")
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def wait_for(self, expr: str, timeout_s: float = 30.0, min_results: int = 1) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns ``min_results`` series (first scrapes take ~5-6 s)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if len(result) >= min_results:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"no result for {expr!r} within {timeout_s} s; targets: "
                    f"{self.targets()}\n{self.log()[-3000:]}"
                )
            time.sleep(0.25)

    def reload(self, timeout_s: float = 10.0) -> None:
        """Apply an edited :attr:`config` (POST /-/reload)."""
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            if r.status != 200:
                raise PrometheusError(f"reload failed: HTTP {r.status}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
