"""A GPU made of a spec, for the sim backend: its clocks really lock, and its energy counter integrates
the spec's idle power model over time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.specs import GpuSpec


class EmulatedGpu:
    """A GPU made of a spec: supported clocks, locking, and an energy counter integrating power over time.

    The emulated card idles at its maximum clock when unlocked (like a boosting GPU). ``busy_power_w`` is
    added while set, so a caller can emulate load.

    Args:
        spec: the GPU it emulates.
        clock: the time source of the energy counter, in seconds.
        idle_power: power in watts at an SM clock in MHz (default: the spec's calibrated idle power).
        uid: its identity for lock records (default ``emulated:<gpu>``).
    """

    def __init__(
        self,
        spec: GpuSpec,
        clock: Callable[[], float] = time.monotonic,
        idle_power: Callable[[int], float] | None = None,
        uid: str | None = None,
    ):
        self.spec = spec
        self.name = spec.display_name
        self.uid = uid or f"emulated:{spec.name}"
        self._now = clock
        self._idle = idle_power or (lambda f: spec.calibration.static_power_w + spec.calibration.clock_power_w_per_mhz * f)
        self.locked: tuple[int, int] | None = None
        self.busy_power_w = 0.0
        self._energy = 0.0
        self._t = self._now()

    def _advance(self) -> None:
        t = self._now()
        self._energy += (t - self._t) * (self._idle(self.sm_clock_mhz()) + self.busy_power_w)
        self._t = t

    def supported_clocks_mhz(self) -> list[int]:
        """The spec's SM clocks, ascending."""
        return list(self.spec.clocks_mhz)

    def sm_clock_mhz(self) -> int:
        """The locked clock (its upper end), else the maximum."""
        return self.locked[1] if self.locked else self.spec.max_clock_mhz

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock to ``min_mhz``-``max_mhz``; both must be clocks of the spec."""
        if min_mhz > max_mhz or min_mhz not in self.spec.clocks_mhz or max_mhz not in self.spec.clocks_mhz:
            raise UserError(f"{self.name} cannot lock {min_mhz}-{max_mhz} MHz: use supported clocks", field="clocks_mhz")
        self._advance()  # the energy so far accrued at the old clock
        self.locked = (int(min_mhz), int(max_mhz))

    def reset_clocks(self) -> None:
        """Unlock: the card runs at its maximum clock again."""
        self._advance()
        self.locked = None

    def energy_j(self) -> float | None:
        """Energy since construction, in joules."""
        self._advance()
        return self._energy

    def power_w(self) -> float | None:
        """The power draw now, in watts."""
        return self._idle(self.sm_clock_mhz()) + self.busy_power_w

    def identity(self) -> dict[str, Any]:
        """What a profile's metadata records of the card."""
        return {
            "gpu_name": self.name, "driver": "emulated", "power_limit_w": self.spec.power_limit_w,
            "memory_clock_mhz": None, "clocks_available_mhz": self.supported_clocks_mhz(),
        }
