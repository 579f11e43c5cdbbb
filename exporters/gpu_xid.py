"""The XID listener of the GPU collector: NVML delivers XIDs as events, not as values to read.

A background thread waits on an NVML event set (``nvmlEventSetWait_v2``, half a second at a
time so it stops promptly) and keeps, per GPU, the last XID, the total per XID code and the
recent ones for dcgm-exporter's windowed count; the collector takes a snapshot at each scrape.
It is the GPU collector's only thread, released by :meth:`XidListener.stop`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from typing import Any

import pynvml

log = logging.getLogger("fmdiag.exporter.gpu")


class XidListener(threading.Thread):
    """Waits on NVML XID events and keeps per-GPU counts for the collector to export."""

    def __init__(self, nvml: Any, handles: dict[int, Any], window_s: float) -> None:
        super().__init__(name="fmdiag-gpu-xid", daemon=True)
        self.nvml = nvml
        self.window_s = window_s
        self._handles: dict[Any, int] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.last: dict[int, int] = {}
        self.totals: dict[tuple[int, int], int] = {}
        self.recent: deque[tuple[float, int, int]] = deque(maxlen=10_000)
        self._set = self.nvml.nvmlEventSetCreate()
        self.watch(handles)

    def watch(self, handles: dict[int, Any]) -> None:
        """Register XID events of GPUs not registered yet.

        Called on every scrape with the GPUs NVML enumerates then, so a GPU that appears after
        start (a driver reload, a GPU back on the bus, a node whose first scrape saw fewer)
        gets its XIDs counted too; NVML accepts registrations while another thread waits.
        """
        for index, handle in handles.items():
            key = self._key(handle)
            with self._lock:
                if self._handles.get(key) == index:
                    continue
            try:
                self.nvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._set)
            except pynvml.NVMLError as exc:
                log.warning("XID events unavailable on GPU %s: %s", index, exc)
            with self._lock:
                self._handles[key] = index  # not retried every scrape when unsupported

    @staticmethod
    def _key(handle: Any) -> Any:
        try:
            return ctypes.cast(handle, ctypes.c_void_p).value
        except (ctypes.ArgumentError, TypeError):
            return id(handle)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                data = self.nvml.nvmlEventSetWait_v2(self._set, 500)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as exc:
                log.warning("XID event wait failed, retrying: %s", exc)
                self._halt.wait(5.0)
                continue
            with self._lock:
                index = self._handles.get(self._key(data.device))
            if index is None or not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                continue
            xid = int(data.eventData)
            with self._lock:
                self.last[index] = xid
                self.totals[(index, xid)] = self.totals.get((index, xid), 0) + 1
                self.recent.append((time.monotonic(), index, xid))

    def snapshot(self) -> tuple[dict[int, int], dict[tuple[int, int], int], dict[tuple[int, int], int]]:
        """(last XID per GPU, totals per (GPU, XID), counts within the window per (GPU, XID))."""
        horizon = time.monotonic() - self.window_s
        with self._lock:
            while self.recent and self.recent[0][0] < horizon:
                self.recent.popleft()
            windowed: dict[tuple[int, int], int] = {}
            for _, index, xid in self.recent:
                windowed[(index, xid)] = windowed.get((index, xid), 0) + 1
            return dict(self.last), dict(self.totals), windowed

    def stop(self) -> None:
        self._halt.set()
        self.join(2.0)
        try:
            self.nvml.nvmlEventSetFree(self._set)
        except pynvml.NVMLError:
            pass
