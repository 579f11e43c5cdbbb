"""The GPU state file a fake NVML serves: a versioned JSON snapshot of every GPU on one node.

The simulator writes it (``<node tree>/nvml/state.json``), :mod:`fmdiag.exporters.nvml_stand_in`
reads it on every NVML call. It is replaced atomically (a complete temporary file renamed
over the old one), so a reader in another thread or process sees the old snapshot or the
new one, never a mixture, even while ``fmdiag simulate --live`` rewrites it every second.

Reading is strict: an unknown format version, a missing required field, an unknown field
or a value of the wrong type is a :class:`GpuStateError` naming the file, the GPU and the
field, because a garbled state file is a simulator bug that must not pass silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "fmdiag-gpu-state"
VERSION = 1
#: Where :func:`fmdiag.simulate.nodes.render.render_node` puts the file inside a node tree.
RELATIVE_PATH = Path("nvml") / "state.json"

DEFAULT_DRIVER_VERSION = "550.90.07"
DEFAULT_CUDA_DRIVER_VERSION = 12040


@dataclass
class GpuProcess:
    pid: int
    used_memory_bytes: int


@dataclass
class MigDeviceState:
    """One MIG device (a compute instance inside a GPU instance) of a GPU with MIG enabled.

    ``profile`` is the GPU instance profile as NVML names it without its ``MIG`` prefix
    (``1g.10gb``); the NVIDIA device plugin's mixed strategy advertises the device as
    ``nvidia.com/mig-<profile>``. ``gi_profile_id`` and the placement are what
    ``nvmlGpuInstanceGetInfo`` reports; the NVIDIA DRA driver names a MIG device by them
    (``gpu-<minor>-mig-<gi_profile_id>-<start>-<size>``).
    """

    index: int  # nvmlDeviceGetMigDeviceHandleByIndex slot, 0 .. MIG_MAX_DEVICES - 1
    uuid: str  # "MIG-..."
    gpu_instance_id: int
    compute_instance_id: int = 0
    profile: str = "1g.10gb"
    gi_profile_id: int = 19  # NVML's id of the 1g.10gb profile on H100
    placement_start: int = 0
    placement_size: int = 1


#: nvmlDeviceGetMaxMigDeviceCount of a MIG-enabled A100/H100/H200: 7 slices.
MIG_MAX_DEVICES = 7


@dataclass
class GpuState:
    """What NVML would answer for one GPU; a fake NVML serves exactly these values."""

    index: int
    uuid: str
    pci_bus_id: str  # "00000000:18:00.0", NVML's busId form
    name: str = "NVIDIA H100 80GB HBM3"
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    max_sm_clock_mhz: int = 1980
    temperature_c: int = 45
    memory_temperature_c: int = 50
    power_mw: int = 400_000
    power_limit_mw: int = 700_000
    energy_mj: int = 0  # cumulative
    util_gpu_pct: int = 0
    util_mem_pct: int = 0
    fb_total_mib: int = 81_559
    fb_used_mib: int = 0
    fb_reserved_mib: int = 555
    clocks_event_reasons: int = 0  # nvmlClocksEventReason* bitmask
    sm_active: float = 0.0  # GPM ratios, 0..1
    sm_occupancy: float = 0.0
    tensor_active: float = 0.0
    dram_active: float = 0.0
    pcie_tx_bytes_per_s: float = 0.0
    pcie_rx_bytes_per_s: float = 0.0
    nvlink_tx_bytes_per_s: float = 0.0
    nvlink_rx_bytes_per_s: float = 0.0
    pcie_replay_count: int = 0
    ecc_sbe_volatile: int = 0
    ecc_dbe_volatile: int = 0
    ecc_sbe_aggregate: int = 0
    ecc_dbe_aggregate: int = 0
    remapped_rows_correctable: int = 0
    remapped_rows_uncorrectable: int = 0
    remap_failure: bool = False
    power_violation_us: int = 0  # cumulative throttle time
    thermal_violation_us: int = 0
    #: NVML 13 fields (driver R575+): cumulative clock-event durations in ns, by reason.
    sw_thermal_slowdown_ns: int = 0
    hw_thermal_slowdown_ns: int = 0
    hw_power_brake_slowdown_ns: int = 0
    #: NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (nvmlDeviceGpuRecoveryAction_t; 0 none), driver R575+.
    recovery_action: int = 0
    #: NVLink 5 (Blackwell) cumulative counters, all links together (the fake spreads them on links).
    nvlink5_tx_bytes: int = 0
    nvlink5_rx_bytes: int = 0
    nvlink5_symbol_errors: int = 0
    nvlink5_effective_errors: int = 0
    nvlink5_recovery_events: int = 0
    nvlink5_recovery_failed_events: int = 0
    #: C2C bandwidth of a Grace-coupled GPU (GH200, GB200), bytes/s.
    c2c_tx_bytes_per_s: float = 0.0
    c2c_rx_bytes_per_s: float = 0.0
    #: nvmlGpuP2PStatus_t of NVLink P2P at this GPU (0 OK); a pair of GPUs reports its worse end.
    nvlink_p2p_status: int = 0
    xid_events: list[int] = field(default_factory=list)  # XIDs raised since the previous snapshot
    processes: list[GpuProcess] = field(default_factory=list)
    numa_node: int = 0
    #: NVML answers NVML_ERROR_GPU_IS_LOST for every call on this GPU.
    lost: bool = False
    #: False: nvmlDeviceGetMigMode answers NVML_ERROR_NOT_SUPPORTED (a GPU without MIG).
    mig_capable: bool = False
    #: The current (and pending) MIG mode; only a MIG-capable GPU can have it on.
    mig_enabled: bool = False
    #: The MIG devices of a GPU with MIG enabled; the slots not listed are empty (NOT_FOUND).
    mig_devices: list[MigDeviceState] = field(default_factory=list)


class GpuStateError(ValueError):
    """The state file is not a valid GPU state document; the message names file and field."""


@dataclass
class GpuStateDoc:
    """One snapshot: the node's GPUs at ``time_s`` plus the driver identity NVML reports."""

    time_s: float
    gpus: list[GpuState] = field(default_factory=list)
    hostname: str = ""
    driver_version: str = DEFAULT_DRIVER_VERSION
    #: ``nvmlSystemGetCudaDriverVersion`` form: 12040 is CUDA 12.4.
    cuda_driver_version: int = DEFAULT_CUDA_DRIVER_VERSION


_GPU_HINTS: dict[str, Any] = typing.get_type_hints(GpuState)
_REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(GpuState)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def to_dict(doc: GpuStateDoc) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "time_s": doc.time_s,
        "hostname": doc.hostname,
        "driver_version": doc.driver_version,
        "cuda_driver_version": doc.cuda_driver_version,
        "gpus": [dataclasses.asdict(g) for g in doc.gpus],
    }


def dumps(doc: GpuStateDoc) -> str:
    """Canonical text (sorted keys, one line per GPU field) so equal states give equal bytes."""
    return json.dumps(to_dict(doc), indent=1, sort_keys=True) + "\n"


def _check_value(where: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the dataclass field type ``hint``, or a GpuStateError."""
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint == list[int]:
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
    elif hint == list[GpuProcess]:
        if isinstance(value, list):
            procs = []
            for i, p in enumerate(value):
                if not isinstance(p, dict) or set(p) != {"pid", "used_memory_bytes"}:
                    raise GpuStateError(
                        f"{where}: field {name!r}[{i}]: expected an object with pid and used_memory_bytes"
                    )
                pid = _check_value(where, f"{name}[{i}].pid", p["pid"], int)
                used = _check_value(where, f"{name}[{i}].used_memory_bytes", p["used_memory_bytes"], int)
                procs.append(GpuProcess(pid=pid, used_memory_bytes=used))
            return procs
    elif hint == list[MigDeviceState]:
        if isinstance(value, list):
            return [_mig_from_dict(f"{where}: field {name!r}[{i}]", raw) for i, raw in enumerate(value)]
    else:  # a GpuState field type this reader does not know: refuse rather than guess
        raise GpuStateError(f"{where}: field {name!r} has unsupported type {hint!r}")
    type_name = getattr(hint, "__name__", str(hint))
    raise GpuStateError(f"{where}: field {name!r}: expected {type_name}, got {value!r}")


_MIG_HINTS: dict[str, Any] = typing.get_type_hints(MigDeviceState)
_MIG_REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(MigDeviceState)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def _checked_fields(where: str, raw: Any, hints: dict[str, Any], required: Any) -> dict[str, Any]:
    """An object's fields, each checked against its type: unknown and missing ones named."""
    if not isinstance(raw, dict):
        raise GpuStateError(f"{where}: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise GpuStateError(f"{where}: unknown field(s) {', '.join(unknown)}")
    missing = [n for n in required if n not in raw]
    if missing:
        raise GpuStateError(f"{where}: missing field(s) {', '.join(missing)}")
    return {name: _check_value(where, name, value, hints[name]) for name, value in raw.items()}


def _mig_from_dict(where: str, raw: Any) -> MigDeviceState:
    return MigDeviceState(**_checked_fields(where, raw, _MIG_HINTS, _MIG_REQUIRED))


def _check_mig(where: str, gpu: GpuState) -> None:
    """The MIG fields of one GPU are consistent, as NVML's answers would be."""
    if gpu.mig_enabled and not gpu.mig_capable:
        raise GpuStateError(f"{where}: field 'mig_enabled': the GPU is not mig_capable")
    if gpu.mig_devices and not gpu.mig_enabled:
        raise GpuStateError(f"{where}: field 'mig_devices': MIG is not enabled on this GPU")
    slots = [m.index for m in gpu.mig_devices]
    if len(set(slots)) != len(slots) or not all(0 <= s < MIG_MAX_DEVICES for s in slots):
        raise GpuStateError(
            f"{where}: field 'mig_devices': slot indexes {slots} must be distinct, 0..{MIG_MAX_DEVICES - 1}"
        )
    instances = [(m.gpu_instance_id, m.compute_instance_id) for m in gpu.mig_devices]
    if len(set(instances)) != len(instances):
        raise GpuStateError(f"{where}: field 'mig_devices': duplicate (GPU instance, compute instance)")
    for m in gpu.mig_devices:
        if not m.uuid.startswith("MIG-"):
            raise GpuStateError(f"{where}: field 'mig_devices': UUID {m.uuid!r} does not start with MIG-")


def _gpu_from_dict(source: str, i: int, raw: Any) -> GpuState:
    where = f"{source}: gpus[{i}]"
    gpu = GpuState(**_checked_fields(where, raw, _GPU_HINTS, _REQUIRED))
    _check_mig(where, gpu)
    return gpu


def loads(text: str, source: str = "<string>") -> GpuStateDoc:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GpuStateError(f"{source}: not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise GpuStateError(f"{source}: expected a JSON object at the top level")
    if raw.get("format") != FORMAT:
        raise GpuStateError(f"{source}: field 'format': expected {FORMAT!r}, got {raw.get('format')!r}")
    if raw.get("version") != VERSION:
        raise GpuStateError(
            f"{source}: field 'version': this reader understands version {VERSION}, "
            f"got {raw.get('version')!r}"
        )
    time_s = _check_value(source, "time_s", raw.get("time_s"), float)
    gpus_raw = raw.get("gpus")
    if not isinstance(gpus_raw, list):
        raise GpuStateError(f"{source}: field 'gpus': expected a list")
    gpus = [_gpu_from_dict(source, i, g) for i, g in enumerate(gpus_raw)]
    indexes = [g.index for g in gpus]
    if len(set(indexes)) != len(indexes):
        raise GpuStateError(f"{source}: field 'gpus': duplicate GPU index in {indexes}")
    mig_uuids = [m.uuid for g in gpus for m in g.mig_devices]
    if len(set(mig_uuids)) != len(mig_uuids):
        raise GpuStateError(f"{source}: field 'mig_devices': a MIG UUID appears twice on this node")
    return GpuStateDoc(
        time_s=time_s,
        gpus=gpus,
        hostname=_check_value(source, "hostname", raw.get("hostname", ""), str),
        driver_version=_check_value(
            source, "driver_version", raw.get("driver_version", DEFAULT_DRIVER_VERSION), str
        ),
        cuda_driver_version=_check_value(
            source, "cuda_driver_version", raw.get("cuda_driver_version", DEFAULT_CUDA_DRIVER_VERSION), int
        ),
    )


def read(path: Path) -> GpuStateDoc:
    """The snapshot in ``path``; OSError when it cannot be read, GpuStateError when garbled."""
    return loads(Path(path).read_text(encoding="utf-8"), str(path))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new content, never a part.

    The temporary file sits next to the target (same filesystem, so the rename is atomic)
    and carries the process and thread id, so concurrent writers never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write(
    path: Path,
    gpus: Sequence[GpuState],
    *,
    time_s: float,
    hostname: str = "",
    driver_version: str = DEFAULT_DRIVER_VERSION,
    cuda_driver_version: int = DEFAULT_CUDA_DRIVER_VERSION,
) -> None:
    """Replace the state file at ``path`` (its directory is created) with this snapshot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = GpuStateDoc(
        time_s=time_s,
        gpus=list(gpus),
        hostname=hostname,
        driver_version=driver_version,
        cuda_driver_version=cuda_driver_version,
    )
    atomic_write_text(path, dumps(doc))
