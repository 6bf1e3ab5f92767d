"""What voltana needs of a GPU (``GpuDevice``), and what every implementation shares.

Two implementations exist: ``NvmlGpu`` (a real card, through NVML) and ``EmulatedGpu`` (a card made of a
spec, for the sim backend). Clocks change only through ``ClockGuard``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

#: Why a clock lock was refused and what to do instead; ``lock_clocks`` is the request field that turns
#: locking off.
LOCK_HINT = (
    "locking GPU clocks needs admin rights (root or CAP_SYS_ADMIN): run as root, or measure at the "
    "card's own clock with lock_clocks off"
)


class GpuDevice(Protocol):
    """What voltana needs of a GPU.

    ``uid`` is stable across processes (the NVML UUID on a real card): lock records are keyed by it.
    """

    name: str
    uid: str

    def supported_clocks_mhz(self) -> list[int]: ...

    def sm_clock_mhz(self) -> int: ...

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None: ...

    def reset_clocks(self) -> None: ...

    def energy_j(self) -> float | None: ...

    def power_w(self) -> float | None: ...

    def identity(self) -> dict[str, Any]: ...


def total_energy_j(gpus: Sequence[GpuDevice]) -> float | None:
    """The energy counters of ``gpus`` summed, in joules.

    Args:
        gpus: the GPUs whose work is being measured (a tensor-parallel server: all of its GPUs).

    Returns:
        The sum, or ``None`` when there are no GPUs or any of them has no counter: a partial sum would
        understate the energy, so it is reported as unavailable instead.
    """
    vals = [g.energy_j() for g in gpus]
    if not gpus or any(v is None for v in vals):
        return None
    return float(sum(v for v in vals if v is not None))
