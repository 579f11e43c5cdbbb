"""RDMA device names as attribution sources give them, resolved to the EFA device name sysfs uses.

The kubelet hands out EFA devices as device names or ``uverbsN`` character devices, and a Slurm
job's processes hold ``/dev/infiniband/uverbsN`` open: both must become the ``device`` label the
EFA collector exports, so the info series join.
"""

from __future__ import annotations

from pathlib import Path


def efa_device(sysfs: Path, device_id: str) -> str:
    """The RDMA device name an EFA device id stands for, "" when sysfs does not know it.

    A name under ``class/infiniband`` is itself; ``uverbsN`` (the character device a plugin
    may hand out) names its device in ``class/infiniband_verbs/uverbsN/ibdev``.
    """
    name = device_id.rsplit("/", 1)[-1]  # "/dev/infiniband/uverbs0" -> "uverbs0"
    if not name or name in (".", ".."):
        return ""
    if (sysfs / "class" / "infiniband" / name).exists():
        return name
    if name.startswith("uverbs"):
        try:
            return (sysfs / "class" / "infiniband_verbs" / name / "ibdev").read_text().strip()
        except OSError:
            return ""
    return ""
