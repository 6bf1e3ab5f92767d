"""Test doubles of voltana's GPU access."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from voltana_cli.core.hardware import EmulatedGpu
from voltana_cli.core.models.specs import GpuSpec


class RecordingGpu(EmulatedGpu):
    """An ``EmulatedGpu`` that records every lock and reset in ``lock_calls`` (a lock as its range, a reset
    as ``None``) and, given ``state_file``, mirrors its lock state there as JSON on every change, so a test
    can watch it from another process and see whether the clocks ended reset. With ``resume`` it starts
    from the state in that file, like a real card that keeps its clocks when the process that locked them dies."""

    def __init__(self, spec: GpuSpec, state_file: str | Path | None = None, clock: Callable[[], float] = time.monotonic,
                 idle_power: Callable[[int], float] | None = None, resume: bool = False, uid: str | None = None):
        super().__init__(spec, clock=clock, idle_power=idle_power, uid=uid)
        self.lock_calls: list[tuple[int, int] | None] = []
        self._state_file = Path(state_file) if state_file else None
        if resume and self._state_file is not None and self._state_file.exists():
            locked = json.loads(self._state_file.read_text())["locked"]
            self.locked = tuple(locked) if locked else None  # type: ignore[assignment]
        self._write_state()

    def _write_state(self) -> None:
        if self._state_file is None:
            return
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"locked": self.locked, "calls": len(self.lock_calls)}))
        os.replace(tmp, self._state_file)  # atomic: the watching test never reads half a file

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None:
        super().lock_clocks(min_mhz, max_mhz)
        self.lock_calls.append(self.locked)
        self._write_state()

    def reset_clocks(self) -> None:
        super().reset_clocks()
        self.lock_calls.append(None)
        self._write_state()
