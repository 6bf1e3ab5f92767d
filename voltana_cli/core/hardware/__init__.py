"""GPU access: one interface (``GpuDevice``), an NVML implementation (``NvmlGpu``), an emulated one
(``EmulatedGpu``), clock control without root through the Zeus daemon (``ZeusdGpu``), the guard every clock
change goes through (``ClockGuard``) and the durable records of its locks (``LockStore``).

Importing this package does not import ``pynvml``: only constructing an ``NvmlGpu`` does.
"""

from voltana_cli.core.hardware.device import LOCK_HINT, GpuDevice, total_energy_j
from voltana_cli.core.hardware.emulated import EmulatedGpu
from voltana_cli.core.hardware.guard import ClockGuard
from voltana_cli.core.hardware.locks import LockRecord, LockStore, default_lock_dir
from voltana_cli.core.hardware.nvml import NvmlGpu, import_pynvml, visible_device
from voltana_cli.core.hardware.zeusd import ZeusdGpu, zeusd_socket

__all__ = [
    "LOCK_HINT",
    "ClockGuard",
    "EmulatedGpu",
    "GpuDevice",
    "LockRecord",
    "LockStore",
    "NvmlGpu",
    "ZeusdGpu",
    "default_lock_dir",
    "import_pynvml",
    "total_energy_j",
    "visible_device",
    "zeusd_socket",
]
