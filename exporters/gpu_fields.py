"""NVML field values the GPU collector reads in one ``nvmlDeviceGetFieldValues`` call per GPU.

NVML 13 (driver R575+) answers newer fields only where the GPU and driver have them: the
clock-event durations in ns (269-271) on R575+, the recovery action (230) on R575+, the NVLink 5
counters (201-250) on Blackwell only. Asking for all of them in one call costs one driver round
trip per GPU; a field the GPU answers NOT_SUPPORTED is remembered for that GPU, said once in
the log, and left out of later calls, so a mixed fleet (H100 next to B200, R550 next to R580)
costs nothing per scrape for what a GPU cannot give.

Only the plan (which field feeds which catalogued metric) and the bookkeeping live here; the
collector owns the NVML handle and the error counting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml

log = logging.getLogger("fmdiag.exporter.gpu")

#: NVLink links a GPU may have (NVML_NVLINK_MAX_LINKS): per-link fields are asked for each.
NVLINK_MAX_LINKS = int(getattr(pynvml, "NVML_NVLINK_MAX_LINKS", 18))


@dataclass(frozen=True)
class FieldPlan:
    """One catalogued metric read from one NVML field (summed over links when ``per_link``)."""

    metric: str
    field_id: int
    per_link: bool = False


def _nvlink5(metric: str, nvml_name: str) -> FieldPlan:
    field_id = getattr(pynvml, f"NVML_FI_DEV_NVLINK_COUNT_{nvml_name}")
    return FieldPlan(f"DCGM_FI_DEV_NVLINK_COUNT_{metric}", field_id, per_link=True)


def _clock_event_ns(reason: str) -> FieldPlan:
    field_id = getattr(pynvml, f"NVML_FI_DEV_CLOCKS_EVENT_REASON_{reason}")
    return FieldPlan(f"DCGM_FI_DEV_CLOCKS_EVENT_REASON_{reason}_NS", field_id)


#: Everything read through field values besides the older per-call readings. The ns clock-event
#: fields SW_POWER_CAP and SYNC_BOOST are the old perf-policy fields (74, 76) under their NVML 13
#: names: older drivers have them too, so those two are there where 269-271 are not.
PLAN: tuple[FieldPlan, ...] = (
    FieldPlan("DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION", pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION),
    _clock_event_ns("SW_POWER_CAP"),
    _clock_event_ns("SYNC_BOOST"),
    _clock_event_ns("SW_THERM_SLOWDOWN"),
    _clock_event_ns("HW_THERM_SLOWDOWN"),
    _clock_event_ns("HW_POWER_BRAKE_SLOWDOWN"),
    _nvlink5("TX_PACKETS", "XMIT_PACKETS"),
    _nvlink5("TX_BYTES", "XMIT_BYTES"),
    _nvlink5("RX_PACKETS", "RCV_PACKETS"),
    _nvlink5("RX_BYTES", "RCV_BYTES"),
    _nvlink5("RX_MALFORMED_PACKET_ERRORS", "MALFORMED_PACKET_ERRORS"),
    _nvlink5("RX_BUFFER_OVERRUN_ERRORS", "BUFFER_OVERRUN_ERRORS"),
    _nvlink5("RX_ERRORS", "RCV_ERRORS"),
    _nvlink5("RX_REMOTE_ERRORS", "RCV_REMOTE_ERRORS"),
    _nvlink5("RX_GENERAL_ERRORS", "RCV_GENERAL_ERRORS"),
    _nvlink5("LOCAL_LINK_INTEGRITY_ERRORS", "LOCAL_LINK_INTEGRITY_ERRORS"),
    _nvlink5("TX_DISCARDS", "XMIT_DISCARDS"),
    _nvlink5("LINK_RECOVERY_SUCCESSFUL_EVENTS", "LINK_RECOVERY_SUCCESSFUL_EVENTS"),
    _nvlink5("LINK_RECOVERY_FAILED_EVENTS", "LINK_RECOVERY_FAILED_EVENTS"),
    _nvlink5("LINK_RECOVERY_EVENTS", "LINK_RECOVERY_EVENTS"),
    _nvlink5("RX_SYMBOL_ERRORS", "SYMBOL_ERRORS"),
    _nvlink5("EFFECTIVE_ERRORS", "EFFECTIVE_ERRORS"),
)


def number(value: Any) -> float | int:
    """The value of one ``c_nvmlFieldValue_t`` by its valueType (integers stay exact)."""
    kind = value.valueType
    if kind == pynvml.NVML_VALUE_TYPE_DOUBLE:
        return float(value.value.dVal)
    if kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
        return int(value.value.ullVal)
    if kind == pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return int(value.value.sllVal)
    if kind == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG:
        return int(value.value.ulVal)
    if kind == pynvml.NVML_VALUE_TYPE_SIGNED_INT:
        return int(value.value.siVal)
    return int(value.value.uiVal)


@dataclass
class FieldReader:
    """Per GPU: which planned metrics are still asked for, and the one call that reads them.

    A metric leaves the plan when every entry of it answers NOT_SUPPORTED (for a per-link field:
    every link), once, with one log line; other per-entry errors are reported to ``on_error``
    each time (they may pass) and the metric is left out of that scrape only.
    """

    gpu: str
    plan: Sequence[FieldPlan] = PLAN
    links: int = NVLINK_MAX_LINKS
    dropped: set[str] = field(default_factory=set)

    def requests(self) -> list[tuple[FieldPlan, tuple[int, int] | int]]:
        """The (plan entry, NVML field id or (id, link)) pairs of this GPU's next call."""
        out: list[tuple[FieldPlan, tuple[int, int] | int]] = []
        for p in self.plan:
            if p.metric in self.dropped:
                continue
            if p.per_link:
                out.extend((p, (p.field_id, link)) for link in range(self.links))
            else:
                out.append((p, p.field_id))
        return out

    def read(
        self, get: Callable[[list[tuple[int, int] | int]], Any], on_error: Callable[[str, int], None]
    ) -> dict[str, float | int]:
        """``metric -> value`` from one ``get(field ids)`` (nvmlDeviceGetFieldValues on the GPU)."""
        asked = self.requests()
        if not asked:
            return {}
        values = get([fid for _, fid in asked])
        found: dict[str, float | int] = {}
        unsupported: dict[str, int] = {}
        entries: dict[str, int] = {}
        for (p, _), value in zip(asked, values, strict=True):
            entries[p.metric] = entries.get(p.metric, 0) + 1
            ret = int(value.nvmlReturn)
            if ret == pynvml.NVML_SUCCESS:
                found[p.metric] = found.get(p.metric, 0) + number(value)
            elif ret == pynvml.NVML_ERROR_NOT_SUPPORTED or (
                # A link index past the GPU's last link is INVALID_ARGUMENT: absent, not an error.
                p.per_link and ret == pynvml.NVML_ERROR_INVALID_ARGUMENT
            ):
                unsupported[p.metric] = unsupported.get(p.metric, 0) + 1
            else:
                on_error(p.metric, ret)
        gone = sorted(m for m, n in unsupported.items() if m not in found and n == entries[m])
        if gone:
            self.dropped.update(gone)
            log.info(
                "GPU %s does not support %s (NVML NOT_SUPPORTED); not asked again", self.gpu, ", ".join(gone)
            )
        return found
