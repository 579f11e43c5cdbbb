"""Rule group ``fmdiag-gpu``: XIDs by resolution tier, the GPU's recovery action, memory errors,
lost and missing GPUs, hardware slowdowns, NVLink and PCIe errors. DCGM names, so a stock
dcgm-exporter feeds them too (the XID tiers also read its windowed ``DCGM_EXP_XID_ERRORS_COUNT``),
with its node label spelled ``hostname`` (4.5.3 and later) or ``Hostname`` (before): the test
cases feed both spellings and expect the alert under ``hostname``."""

from __future__ import annotations

from fmdiag.catalog import GPU_RECOVERY_ACTIONS, GPU_RECOVERY_OUT_OF_SERVICE, XID_ACTIONS
from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries import gpu as q
from fmdiag.dashboards.queries.scope import RULES
from fmdiag.dashboards.rules.model import Alert, Case, Group, count_drop_cases, series

FILE = "fmdiag-gpu.yaml"
_GPU = {"job": "fmdiag", "cluster": "c1", "hostname": "node-1", "gpu": "0", "UUID": "GPU-0"}
#: The same GPU as dcgm-exporter up to 4.5.3 (and fmdiag with --collector.gpu.hostname-label=Hostname)
#: labels it; its alerts come out under ``hostname`` all the same.
_GPU_LEGACY = {"job": "dcgm-exporter", "cluster": "c1", "Hostname": "node-1", "gpu": "0", "UUID": "GPU-0"}
_OUT = {"cluster": "c1", "hostname": "node-1", "gpu": "0", "UUID": "GPU-0"}
_WHERE = "GPU {{ $labels.gpu }} ({{ $labels.UUID }}) on {{ $labels.hostname }}"


def _xids(*actions: str) -> str:
    return "|".join(str(x) for x, a in sorted(XID_ACTIONS.items()) if a in actions)


def _xid_alert(c: Config, name: str, actions: tuple[str, ...], severity: str, what: str, other: str) -> Alert:
    tier = "|".join(actions)
    gpu_id = ", ".join(q.gpu_labels(c))
    expr = (
        f"({q.xid_errors(c, RULES, '10m', tier)} > 0)"
        f" or on({gpu_id}, xid) ({q.xid_count_dcgm(c, RULES, _xids(*actions))} > 0)"
    )
    first = _xids(*actions).split("|")[0]
    return Alert(
        name=name,
        expr=expr,
        severity=severity,
        summary=f"XID {{{{ $labels.xid }}}} on {_WHERE}: {what}.",
        description=(
            f"{_WHERE} reported XID {{{{ $labels.xid }}}} in the last 10 minutes; NVIDIA's XID catalog"
            f" puts it in the {tier} tier: {what}."
        ),
        labels={"tier": actions[0]},
        cases=(
            Case(
                "fmdiag counter",
                (series("fmdiag_gpu_xid_errors_total", "0 0 0 1 1 1", **_GPU, xid=first, action=actions[0]),),
                "5m",
                ({**_OUT, "xid": first, "action": actions[0]},),
            ),
            Case(
                "stock dcgm-exporter window count",
                (
                    series(
                        "DCGM_EXP_XID_ERRORS_COUNT", "0 0 1 1", **_GPU, xid=first, window_size_in_ms="300000"
                    ),
                ),
                "3m",
                ({**_OUT, "xid": first},),
            ),
            Case(
                "dcgm-exporter before 4.5.3 (Hostname)",
                (
                    series(
                        "DCGM_EXP_XID_ERRORS_COUNT",
                        "0 0 1 1",
                        **_GPU_LEGACY,
                        xid=first,
                        window_size_in_ms="300000",
                    ),
                ),
                "3m",
                ({**_OUT, "xid": first},),
            ),
            Case(
                "no XID in the window (dcgm-exporter's zero series)",
                (series("DCGM_EXP_XID_ERRORS_COUNT", "0x5", **_GPU, window_size_in_ms="300000"),),
                "5m",
            ),
            Case(
                f"an XID of another tier ({other})",
                (
                    series(
                        "fmdiag_gpu_xid_errors_total",
                        "0 0 0 1 1 1",
                        **_GPU,
                        xid=other,
                        action=XID_ACTIONS[int(other)],
                    ),
                    series(
                        "DCGM_EXP_XID_ERRORS_COUNT", "0 0 1 1", **_GPU, xid=other, window_size_in_ms="300000"
                    ),
                ),
                "5m",
            ),
            Case(
                "old XID outside the window",
                (series("fmdiag_gpu_xid_errors_total", "1+0x30", **_GPU, xid=first, action=actions[0]),),
                "30m",
            ),
        ),
    )


def _gauge_case(metric: str, fire: str, quiet: str, at: str) -> tuple[Case, Case, Case]:
    return (
        Case("fires", (series(metric, fire, **_GPU),), at, (_OUT,)),
        Case("fires from a Hostname-labelled target", (series(metric, fire, **_GPU_LEGACY),), at, (_OUT,)),
        Case("silent", (series(metric, quiet, **_GPU),), at),
    )


_RECOVERY = "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION"


def _recovery_alert(c: Config, name: str, values: tuple[int, ...], severity: str, what: str) -> Alert:
    """The GPU's recovery action (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION) among ``values``, named in
    a ``recovery_action`` label (catalog.GPU_RECOVERY_ACTIONS) for the annotations."""
    action = q.per_gpu(c, RULES, _RECOVERY)
    expr = " or ".join(
        f'label_replace({action} == {v}, "recovery_action", "{GPU_RECOVERY_ACTIONS[v]}", "", "")'
        for v in values
    )
    fire, other = values[0], next(v for v in GPU_RECOVERY_ACTIONS if v and v not in values)
    out = {**_OUT, "recovery_action": GPU_RECOVERY_ACTIONS[fire]}
    return Alert(
        name=name,
        expr=expr,
        for_="1m",
        severity=severity,
        summary=f"{_WHERE} asks for recovery action {{{{ $labels.recovery_action }}}}.",
        description=(
            f"NVML's GPU recovery action for {_WHERE} is {{{{ $labels.recovery_action }}}} (the driver "
            f"set it after an XID; XID 154 says when it changes): {what}."
        ),
        cases=(
            Case("fires", (series(_RECOVERY, f"0 {fire}x5", **_GPU),), "4m", (out,)),
            Case(
                "fires from a Hostname-labelled target",
                (series(_RECOVERY, f"0 {fire}x5", **_GPU_LEGACY),),
                "4m",
                (out,),
            ),
            Case("none", (series(_RECOVERY, "0x5", **_GPU),), "4m"),
            Case(
                f"another action ({GPU_RECOVERY_ACTIONS[other]})",
                (series(_RECOVERY, f"0 {other}x5", **_GPU),),
                "4m",
            ),
            Case("cleared before the minute", (series(_RECOVERY, f"0 {fire} 0 0 0", **_GPU),), "4m"),
        ),
    )


def group(c: Config) -> Group:
    t = c.thresholds
    reasons = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
    return Group(
        name="fmdiag-gpu",
        file=FILE,
        rules=(
            _xid_alert(c, "FmdiagGpuXidRebootNode", ("reboot_node",), "critical", "reboot the node", "13"),
            _xid_alert(
                c,
                "FmdiagGpuXidResetGpu",
                ("reset_gpu",),
                "critical",
                "drain the node and reset the GPU",
                "79",
            ),
            _xid_alert(
                c,
                "FmdiagGpuXidNeedsAttention",
                ("restart_app", "workflow", "report", "monitor"),
                "warning",
                "restart the application or follow the XID's workflow",
                "43",
            ),
            _recovery_alert(
                c,
                "FmdiagGpuRecoveryActionRequired",
                GPU_RECOVERY_OUT_OF_SERVICE,
                "critical",
                "drain the node, then reset the GPU or reboot the node as the action says; the GPU is not "
                "fit for work until then",
            ),
            _recovery_alert(
                c,
                "FmdiagGpuRecoveryDrain",
                tuple(v for v in GPU_RECOVERY_ACTIONS if v and v not in GPU_RECOVERY_OUT_OF_SERVICE),
                "warning",
                "let running work finish, take no new peer-to-peer (NVLink) work on the GPU, then recover "
                "the IMEX domain or reset as NVIDIA's XID catalog says",
            ),
            Alert(
                name="FmdiagGpuEccDoubleBitErrors",
                expr=f"{q.counter_increase(c, RULES, 'DCGM_FI_DEV_ECC_DBE_VOL_TOTAL', '10m')} > 0",
                severity="critical",
                summary=f"Uncorrectable (double-bit) ECC errors on {_WHERE}.",
                description=f"{_WHERE} counted double-bit ECC errors in the last 10 minutes: data was "
                "corrupted; drain the node.",
                cases=(
                    Case(
                        "fires",
                        (series("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "0 0 0 2 2", **_GPU),),
                        "4m",
                        (_OUT,),
                    ),
                    Case("silent", (series("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "3+0x20", **_GPU),), "20m"),
                ),
            ),
            Alert(
                name="FmdiagGpuRowRemapFailure",
                expr=f"{q.per_gpu(c, RULES, 'DCGM_FI_DEV_ROW_REMAP_FAILURE')} > 0",
                severity="critical",
                summary=f"Row remapping failed on {_WHERE}.",
                description=f"{_WHERE} could not remap a failing memory row: the GPU needs replacing (RMA).",
                cases=_gauge_case("DCGM_FI_DEV_ROW_REMAP_FAILURE", "0 1 1", "0 0 0", "2m"),
            ),
            Alert(
                name="FmdiagGpuRowRemapPending",
                expr=(
                    f"({q.counter_increase(c, RULES, 'DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS', '1h')} > 0)"
                    f" or ({q.per_gpu(c, RULES, 'DCGM_FI_DEV_RETIRED_PENDING')} > 0)"
                ),
                severity="warning",
                summary=f"Memory rows remapped or pages pending retirement on {_WHERE}.",
                description=f"{_WHERE} remapped rows after uncorrectable errors or has pages pending "
                "retirement: reset the GPU when the job allows, so the remap takes effect.",
                cases=(
                    Case(
                        "remapped",
                        (series("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "0 0 1 1", **_GPU),),
                        "3m",
                        (_OUT,),
                    ),
                    Case("pending", (series("DCGM_FI_DEV_RETIRED_PENDING", "0 1 1", **_GPU),), "2m", (_OUT,)),
                    Case(
                        "silent",
                        (
                            series("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "2+0x80", **_GPU),
                            series("DCGM_FI_DEV_RETIRED_PENDING", "0+0x80", **_GPU),
                        ),
                        "80m",
                    ),
                ),
            ),
            Alert(
                name="FmdiagGpuMissing",
                expr=(
                    f"{q.gpu_devices(c, RULES)} < max by ({c.cluster_label}, {c.node_label})"
                    f" (max_over_time(fmdiag_gpu_devices{RULES.fmdiag(c)}[1d]))"
                ),
                for_="5m",
                severity="critical",
                summary="{{ $labels.instance }} sees fewer GPUs than it usually does.",
                description="NVML on {{ $labels.instance }} enumerates fewer GPUs than it did in the last "
                "day: a GPU fell off the bus (XID 79) or its driver failed; drain and reboot the "
                "node.",
                cases=count_drop_cases("fmdiag_gpu_devices", 8, "one GPU gone"),
            ),
            Alert(
                name="FmdiagGpuLost",
                expr=q.lost_gpus(c, RULES),
                for_="1m",
                severity="critical",
                summary=f"{_WHERE} is lost (NVML_ERROR_GPU_IS_LOST).",
                description=f"{_WHERE} no longer answers NVML (GPU is lost); dcgm-exporter would silently "
                "drop it. Drain the node and reboot it.",
                cases=_gauge_case("fmdiag_gpu_lost", "0 1 1 1", "0 0 0 0", "3m"),
            ),
            Alert(
                name="FmdiagGpuHwThermalSlowdown",
                expr=f"{q.clock_event_bit(c, RULES, q.HW_THERMAL)} == 1",
                for_="5m",
                severity="warning",
                summary=f"{_WHERE} is in HW thermal slowdown.",
                description=f"{_WHERE} has had clock event reason 0x40 (HW thermal slowdown) for 5 minutes: "
                "its rank is a straggler that slows the whole job. Check cooling and airflow; "
                "move the job off the node.",
                cases=_gauge_case(reasons, "72x10", "36x10", "8m"),
            ),
            Alert(
                name="FmdiagGpuHwPowerBrake",
                expr=f"{q.clock_event_bit(c, RULES, q.HW_POWER_BRAKE)} == 1",
                for_="5m",
                severity="warning",
                summary=f"{_WHERE} is power-braked.",
                description=f"{_WHERE} has had clock event reason 0x80 (HW power brake) for 5 minutes: the "
                "board's power supply asserted the brake; its rank is a straggler. Check the PSU "
                "and power shelf.",
                cases=_gauge_case(reasons, "136x10", "4x10", "8m"),
            ),
            Alert(
                name="FmdiagGpuNvlinkErrors",
                expr=f"({q.nvlink_error_rate(c, RULES, '10m')}) * 600 > {t.nvlink_errors_per_10m:g}",
                severity="warning",
                summary=f"NVLink errors on {_WHERE}.",
                description=f"{_WHERE} counted more than {t.nvlink_errors_per_10m:g} NVLink CRC, replay or "
                "recovery errors in 10 minutes: a link is degrading; all-reduce inside the node "
                "slows. Reseat or replace at the next maintenance.",
                cases=(
                    Case(
                        "recovery errors",
                        (
                            series("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "0+5x10", **_GPU),
                            series("DCGM_FI_DEV_GPU_TEMP", "60x10", **_GPU),
                        ),
                        "10m",
                        (_OUT,),
                    ),
                    Case(
                        "NVLink 5 link recoveries (Blackwell)",
                        (
                            series("DCGM_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_EVENTS", "0+3x10", **_GPU_LEGACY),
                            series("DCGM_FI_DEV_GPU_TEMP", "60x10", **_GPU_LEGACY),
                        ),
                        "10m",
                        (_OUT,),
                    ),
                    Case(
                        "a few errors",
                        (
                            series(
                                "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
                                "0 1 1 1 1 1 1 1 1 1 1",
                                **_GPU,
                            ),
                            series("DCGM_FI_DEV_GPU_TEMP", "60x10", **_GPU),
                        ),
                        "10m",
                    ),
                ),
            ),
            Alert(
                name="FmdiagGpuPcieReplays",
                expr=f"{q.counter_rate(c, RULES, 'DCGM_FI_DEV_PCIE_REPLAY_COUNTER', '5m')} > "
                f"{t.pcie_replays_per_second:g}",
                for_="10m",
                severity="warning",
                summary=f"PCIe replays on {_WHERE}.",
                description=f"{_WHERE} retries more than {t.pcie_replays_per_second:g} PCIe transfers a "
                "second: a marginal PCIe link slows host-device copies and NCCL over PCIe. Check "
                "the riser and slot.",
                cases=(
                    Case(
                        "fires",
                        (series("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "0+120x20", **_GPU),),
                        "20m",
                        (_OUT,),
                    ),
                    Case("silent", (series("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "0+6x20", **_GPU),), "20m"),
                ),
            ),
        ),
    )
