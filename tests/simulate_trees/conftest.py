"""Node states built by hand for the node-tree tests (independent of the cluster model)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState
from fmdiag.simulate.nodes.readings import (
    EfaDeviceState,
    HostState,
    LustreFsState,
    LustreTargetState,
    NodeState,
    OpStat,
    ProcessState,
)

T0 = 1_700_000_000.25


def efa_device(i: int, step: int, *, srd: bool = True) -> EfaDeviceState:
    bus = 0x4F + i
    port = {
        "tx_bytes": 10_000_000 * step + i,
        "rx_bytes": 9_000_000 * step + i,
        "tx_pkts": 1_200 * step,
        "rx_pkts": 1_100 * step,
        "rdma_read_bytes": 5_000 * step,
        "retrans_pkts": 3 * step,
        "impaired_remote_conn_events": step // 2,
        "a_newer_driver_counter": 7 * step,
    }
    return EfaDeviceState(
        name=f"rdmap{bus}s0",
        pci_address=f"0000:{bus:02x}:00.0",
        numa_node=i % 2,
        node_guid=f"0ab1:23ff:fe45:{i:04x}",
        fw_ver="0.0.0.0",
        port_counters=port,
        device_counters={"submitted_cmds": 40 + step, "completed_cmds": 40 + step, "keep_alive_rcvd": step},
        srd_counters=srd,
    )


def lustre_fs(version: str, step: int, *, fsname: str = "lustrefs", osts: int = 2) -> LustreFsState:
    reads = 4 * step
    ost_list = []
    for o in range(osts):
        ost_list.append(
            LustreTargetState(
                index=o,
                stats={
                    "req_waittime": OpStat(
                        10 * step + 1, "usecs", 95, 900 + o, 5000 * step + 95, 10**7 * step
                    ),
                    "req_active": OpStat(10 * step + 1, "reqs", 1, 8, 30 * step + 1, 100 * step + 1),
                    "read_bytes": OpStat(
                        reads, "bytes", 1 << 20, 4 << 20, reads * (2 << 20), reads * (4 << 40)
                    ),
                    "ost_read": OpStat(reads, "usecs", 300, 2000 + o, reads * 800, reads * 700_000),
                    "ldlm_glimpse_enqueue": OpStat(step, "reqs", 1, 1, step, step),
                    "obd_ping": OpStat(0, "usecs"),  # never pinged: count 0, not printed
                },
                read_rpcs_in_flight=min(8, step),
                write_rpcs_in_flight=0,
                pending_read_pages=16 * o,
                pending_write_pages=3,
                read_pages_per_rpc={256: reads - step, 1024: step},
                write_pages_per_rpc={1: step},
            )
        )
    mdt = LustreTargetState(
        index=0,
        stats={
            "req_waittime": OpStat(5 * step, "usecs", 60, 700, 900 * step, 10**6 * step),
            "mds_close": OpStat(2 * step, "usecs", 70, 600, 300 * step, 90_000 * step),
            "mds_reint": OpStat(step, "usecs", 80, 500, 200 * step, 50_000 * step),
            "ldlm_ibits_enqueue": OpStat(3 * step, "reqs", 1, 1, 3 * step, 3 * step),
        },
    )
    return LustreFsState(
        fsname=fsname,
        sbid="ffff88105db50000",
        version=version,
        llite={
            "open": OpStat(136 * step, "usecs", 1, 172, 4000 * step, 90_000 * step),
            "close": OpStat(136 * step, "usecs", 60, 194, 9000 * step, 700_000 * step),
            "read_bytes": OpStat(reads, "bytes", 4096, 4 << 20, reads * (2 << 20), reads * (4 << 40)),
            "read": OpStat(reads, "usecs", 1207, 24862, reads * 2000, reads * 9_000_000),
            "ioctl": OpStat(2, "reqs"),
            "getattr": OpStat(0, "usecs"),
        },
        read_ahead={"hits": 100 * step, "misses": step, "miss inside window": 2, "failed_to_fast_read": 3},
        osts=ost_list,
        mdts=[mdt],
    )


def host(step: int) -> HostState:
    return HostState(
        cpu_seconds={
            "user": 1000.5 + 90 * step,
            "system": 200.25 + 10 * step,
            "idle": 50_000.0 + 92 * step,
            "iowait": 12.0 + step,
            "softirq": 3.0,
        },
        ncpus=8,
        pressure_us={"io": {"some": 400_000 * step, "full": 100_000 * step}, "cpu": {"some": 50_000 * step}},
        processes=[
            ProcessState(
                pid=41000,
                name="pt_main_thread",
                cmdline=["/usr/bin/python3", "-u", "train.py", "--lr=3e-4"],
                cpu_user_s=100.0 + 60 * step,
                cpu_system_s=20.0 + step,
                cpu_iowait_s=1.5 + 0.25 * step,
                rss_bytes=(2 << 30) + 4096 * step,
                read_bytes=10**9 + 10**6 * step,
                write_bytes=10**8,
                threads=64,
                start_time_s=T0 - 3600.0,
            ),
            ProcessState(
                pid=41017,
                name="a_very_long_dataloader_name",
                cmdline=["a_very_long_dataloader_name", "--worker=1"],
                cpu_user_s=30.0 + 20 * step,
                cpu_system_s=5.0,
                cpu_iowait_s=0.0,
                rss_bytes=1 << 30,
                read_bytes=0,
                write_bytes=0,
                threads=3,
                start_time_s=T0 - 3500.5,
            ),
        ],
    )


def gpus(step: int) -> list[GpuState]:
    return [
        GpuState(
            index=i,
            uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
            pci_bus_id=f"00000000:{0x53 + 0x11 * i:02X}:00.0",
            energy_mj=1000 * step,
            util_gpu_pct=90,
            sm_active=0.8,
            xid_events=[],
            processes=[GpuProcess(41000, 70 << 30)],
        )
        for i in range(2)
    ]


def make_node(
    step: int = 1,
    *,
    version: str = "2.14",
    efa_devices: int = 3,
    filesystems: int = 1,
    time_s: float | None = None,
) -> NodeState:
    return NodeState(
        hostname="node-000",
        time_s=T0 + step if time_s is None else time_s,
        gpus=gpus(step),
        efa=[efa_device(i, step, srd=i != 1) for i in range(efa_devices)],
        lustre=[lustre_fs(version, step, fsname=f"fs{k}") for k in range(filesystems)],
        host=host(step),
    )


@pytest.fixture
def node() -> Callable[..., NodeState]:
    return make_node
