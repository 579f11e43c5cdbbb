"""Names and places of everything in the simulated cluster: hosts, GPUs, EFA devices, OSTs.

Identities derive from the host name and device index only (never from the seed), so the
same node has the same GPU UUIDs and EFA GUIDs in every scenario and run, like real hardware.
The PCI layout follows a p5.48xlarge: GPUs on buses 0x53, 0x64, ... 0xca, each with its EFA
devices on the buses just below it (GPU 0x53 -> EFA 0x4f..0x52, named ``rdmap79s0``...).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from fmdiag.simulate.cluster.config import Hardware

#: PCI buses of a p5.48xlarge's GPUs; larger nodes continue the pattern.
_GPU_BUSES = (0x53, 0x64, 0x75, 0x86, 0x97, 0xA8, 0xB9, 0xCA)
_FS_NAMES = ("lustrefs", "ckptfs", "scratchfs", "homefs")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def gpu_bus(index: int) -> int:
    if index < len(_GPU_BUSES):
        return _GPU_BUSES[index]
    return (0x08 + 0x11 * (index - len(_GPU_BUSES))) & 0xFF


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    pci_bus_id: str  # NVML form "00000000:53:00.0"
    numa_node: int


@dataclass(frozen=True)
class EfaInfo:
    index: int
    name: str
    pci_address: str
    numa_node: int
    node_guid: str
    gpu: int  # the GPU on the same PCIe switch


@dataclass(frozen=True)
class FsInfo:
    index: int
    fsname: str
    osts: int

    def ost_name(self, ost: int) -> str:
        return f"{self.fsname}-OST{ost:04x}"


class Topology:
    """Every name in the cluster, computed once from the hardware description."""

    def __init__(self, hw: Hardware) -> None:
        self.hw = hw

    @cached_property
    def hostnames(self) -> list[str]:
        return [f"node-{i:03d}" for i in range(self.hw.nodes)]

    def rank(self, node: int, local_rank: int) -> int:
        return node * self.hw.gpus_per_node + local_rank

    def place(self, rank: int) -> tuple[int, int]:
        """(node index, local rank) of a global rank."""
        return divmod(rank, self.hw.gpus_per_node)

    def gpus(self, node: int) -> list[GpuInfo]:
        host = self.hostnames[node]
        g = self.hw.gpus_per_node
        out = []
        for i in range(g):
            d = _digest(f"{host}/gpu{i}").hex()
            uuid = f"GPU-{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:32]}"
            numa = 0 if i < (g + 1) // 2 else 1
            out.append(GpuInfo(i, uuid, f"00000000:{gpu_bus(i):02x}:00.0", numa))
        return out

    def efa(self, node: int) -> list[EfaInfo]:
        host = self.hostnames[node]
        g, e = self.hw.gpus_per_node, self.hw.efa_devices
        per_gpu = -(-e // g)
        gpus = self.gpus(node)
        out = []
        for j in range(e):
            if e >= g:
                gpu, slot = divmod(j, per_gpu)
                bus = gpu_bus(gpu) - per_gpu + slot
            else:
                gpu = j * g // e
                bus = gpu_bus(gpu) - 1
            d = _digest(f"{host}/efa{j}").hex()
            guid = f"{d[0:4]}:{d[4:6]}ff:fe{d[6:8]}:{d[8:12]}"
            out.append(EfaInfo(j, f"rdmap{bus}s0", f"0000:{bus:02x}:00.0", gpus[gpu].numa_node, guid, gpu))
        return out

    @cached_property
    def filesystems(self) -> list[FsInfo]:
        names = [_FS_NAMES[i] if i < len(_FS_NAMES) else f"lfs{i}" for i in range(self.hw.lustre_filesystems)]
        return [FsInfo(i, name, self.hw.osts_per_fs) for i, name in enumerate(names)]

    @property
    def data_fs(self) -> FsInfo:
        """The filesystem the dataset is read from."""
        return self.filesystems[0]

    @property
    def checkpoint_fs(self) -> FsInfo:
        """The filesystem checkpoints are written to (the last one; the data fs when alone)."""
        return self.filesystems[-1]

    def superblock_id(self, node: int, fs: int) -> str:
        return "ffff8810" + _digest(f"{self.hostnames[node]}/sb{fs}").hex()[:8]

    def pid(self, local_rank: int) -> int:
        return 41000 + 17 * local_rank
