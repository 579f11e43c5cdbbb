"""dcgm-exporter 4.x's own GPU counters (``DCGM_EXP_*``) computed from NVML instead of DCGM.

dcgm-exporter derives them from DCGM: clock events counted over a window of DCGM samples,
health from DCGM's health watches, P2P status from DCGM's NVLink P2P matrix. fmdiag has no DCGM,
so it computes the same series, under the same names and labels, from what its GPU collector
reads anyway: the clock-event bitmask sampled at each scrape, and ECC, row-remapping, PCIe
replay, NVLink 5 and recovery-action readings. The rules are pure functions of those readings,
so each finding can be tested without NVML.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from fmdiag.catalog import DCGM_CLOCK_EVENTS, GPU_RECOVERY_ACTIONS, HEALTH_RESULTS

#: DCGM's PCIe health threshold: replays per minute above which it warns (DCGM_FR_PCI_REPLAY_RATE).
PCIE_REPLAYS_PER_MINUTE = 8.0
#: Recovery action -> the DCGM_FR_* code DCGM reports under health_watch ALL.
_RECOVERY_CODES = {
    1: "DCGM_FR_GPU_RECOVERY_RESET",
    2: "DCGM_FR_GPU_RECOVERY_REBOOT",
    3: "DCGM_FR_GPU_RECOVERY_DRAIN_P2P",
    4: "DCGM_FR_GPU_RECOVERY_DRAIN_RESET",
    6: "DCGM_FR_GPU_RECOVERY_RESET",
    7: "DCGM_FR_GPU_RECOVERY_REBOOT",
}
#: Clock-event bits DCGM's health checks flag: HW thermal (0x40) and HW power brake (0x80).
_HW_THERMAL, _HW_POWER_BRAKE = 0x40, 0x80


class ClockEventWindow:
    """The clock-event bitmask of each GPU as sampled at each scrape, kept for ``window_s``.

    dcgm-exporter counts, per reason, the DCGM samples within its window that had the reason's
    bit set; fmdiag's samples are its scrapes, so the count is the scrapes within the window
    that saw the reason (at most window / scrape interval).
    """

    #: Bound on samples kept per GPU (a scrape a second for an hour).
    MAX_SAMPLES = 3600

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def add(self, gpu: str, bitmask: int, now: float | None = None) -> None:
        samples = self._samples.setdefault(gpu, deque(maxlen=self.MAX_SAMPLES))
        samples.append((time.monotonic() if now is None else now, int(bitmask)))

    def counts(self, gpu: str, now: float | None = None) -> dict[str, int]:
        """``clock_event`` label -> samples in the window with that bit set (only non-zero ones)."""
        samples = self._samples.get(gpu)
        if not samples:
            return {}
        horizon = (time.monotonic() if now is None else now) - self.window_s
        while samples and samples[0][0] < horizon:
            samples.popleft()
        out: dict[str, int] = {}
        for _, mask in samples:
            for bit, name in DCGM_CLOCK_EVENTS.items():
                if mask & bit:
                    out[name] = out.get(name, 0) + 1
        return out

    def forget(self, keep: set[str]) -> None:
        """Drop GPUs no longer enumerated, so a replaced GPU's history does not linger."""
        for gpu in set(self._samples) - keep:
            del self._samples[gpu]


@dataclass(frozen=True)
class HealthReadings:
    """What one scrape read of one GPU that DCGM's health watches judge (None: not available)."""

    ecc_dbe_volatile: int | None = None
    row_remap_failure: bool | None = None
    remapped_uncorrectable_delta: int | None = None
    clocks_event_reasons: int | None = None
    pcie_replays_per_minute: float | None = None
    nvlink_recovery_failed_delta: int | None = None
    nvlink_effective_errors_delta: int | None = None
    recovery_action: int | None = None


@dataclass(frozen=True)
class Finding:
    watch: str
    result: int
    code: str


def _watch(name: str, judged: list[tuple[bool, str, str]]) -> Finding:
    """The worst of ``(applies, result, code)``; PASS with DCGM_FR_OK when none applies."""
    worst = Finding(name, HEALTH_RESULTS["pass"], "DCGM_FR_OK")
    for applies, result, code in judged:
        if applies and HEALTH_RESULTS[result] > worst.result:
            worst = Finding(name, HEALTH_RESULTS[result], code)
    return worst


def health(r: HealthReadings) -> Iterator[Finding]:
    """One finding per health watch whose readings this GPU gave (a watch with none is left out)."""
    if r.ecc_dbe_volatile is not None or r.row_remap_failure is not None:
        yield _watch(
            "MEM",
            [
                (bool(r.ecc_dbe_volatile), "fail", "DCGM_FR_VOLATILE_DBE_DETECTED"),
                (bool(r.remapped_uncorrectable_delta), "warn", "DCGM_FR_PENDING_ROW_REMAP"),
                (bool(r.row_remap_failure), "fail", "DCGM_FR_ROW_REMAP_FAILURE"),
            ],
        )
    if r.pcie_replays_per_minute is not None:
        rate = r.pcie_replays_per_minute
        yield _watch("PCIE", [(rate > PCIE_REPLAYS_PER_MINUTE, "warn", "DCGM_FR_PCI_REPLAY_RATE")])
    if r.nvlink_recovery_failed_delta is not None or r.nvlink_effective_errors_delta is not None:
        yield _watch(
            "NVLINK",
            [
                (bool(r.nvlink_effective_errors_delta), "warn", "DCGM_FR_NVLINK_ERROR_THRESHOLD"),
                (bool(r.nvlink_recovery_failed_delta), "fail", "DCGM_FR_NVLINK_DOWN"),
            ],
        )
    if r.clocks_event_reasons is not None:
        mask = r.clocks_event_reasons
        yield _watch("THERMAL", [(bool(mask & _HW_THERMAL), "warn", "DCGM_FR_CLOCK_THROTTLE_THERMAL")])
        yield _watch("POWER", [(bool(mask & _HW_POWER_BRAKE), "warn", "DCGM_FR_CLOCK_THROTTLE_POWER")])
    if r.recovery_action is not None:
        action = r.recovery_action
        code = _RECOVERY_CODES.get(action, "DCGM_FR_UNKNOWN")
        drain_only = GPU_RECOVERY_ACTIONS.get(action) in ("drain_p2p", "recover_imex_domain")
        yield _watch("ALL", [(action != 0, "warn" if drain_only else "fail", code)])


def rate_per_minute(previous: tuple[float, int] | None, now: tuple[float, int]) -> float | None:
    """Counter increase per minute between two (monotonic time, value) readings; None at first."""
    if previous is None or now[0] <= previous[0] or now[1] < previous[1]:
        return None
    return (now[1] - previous[1]) * 60.0 / (now[0] - previous[0])


def delta(previous: Mapping[str, float | int], now: Mapping[str, float | int], metric: str) -> int | None:
    """Increase of ``metric`` since the previous scrape (0 at the first; None when not read)."""
    if metric not in now:
        return None
    if metric not in previous or now[metric] < previous[metric]:
        return 0
    return int(now[metric] - previous[metric])
