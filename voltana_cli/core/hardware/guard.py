"""``ClockGuard``: how voltana changes clocks.

Every lock goes through it, and it resets every GPU it touched when the ``with`` block ends, whether
normally, by an exception, Ctrl-C, SIGTERM or SIGHUP (those two signals are turned into ``SystemExit``
while the guard is active). It never relies on ``__del__``: a locked clock left behind costs the next user
of the card performance or energy, so the reset must not wait for garbage collection.

Given a ``LockStore``, the guard also covers what no Python code survives (``kill -9``): it records each
GPU's lock durably before taking it, resets clocks that a dead owner left locked when it starts, and
refuses a GPU whose clocks a live voltana process holds (see ``locks``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware.device import GpuDevice
from voltana_cli.core.hardware.locks import LockStore, owner_alive

_RESET_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class ClockGuard:
    """Context manager through which voltana locks clocks; resets every GPU it locked on exit.

    ``lock=False`` makes ``set`` a no-op that records the request: the caller measures at whatever clock
    the card runs (and says so). Signals (SIGTERM, SIGHUP) raise ``SystemExit(128 + signum)`` inside the
    block when it runs on the main thread, so the reset in ``__exit__`` runs before the process ends.

    Args:
        gpus: the GPUs whose clocks ``set`` locks.
        lock: whether ``set`` locks at all.
        on_reset_error: told each reset that failed (the reset of the others goes on).
        store: where locks are recorded (``None``: not recorded, for cards whose clocks die with the
            process, like the sim backend's emulated one).
        on_notice: told of each stale lock found and reset on entry.
    """

    def __init__(self, gpus: list[GpuDevice], lock: bool = True, on_reset_error: Callable[[str], None] | None = None,
                 store: LockStore | None = None, on_notice: Callable[[str], None] | None = None):
        self.gpus = gpus
        self.lock = lock
        self.touched: list[GpuDevice] = []
        self._old: dict[int, Any] = {}
        self._on_err = on_reset_error
        self.reset_errors: list[str] = []
        self.store = store
        self._on_notice = on_notice
        self.notices: list[str] = []

    def _take_over(self) -> None:
        """Reset clocks that a dead owner left locked; refuse GPUs that a live one holds (before any change)."""
        if self.store is None:
            return
        held = [(g, r) for g in self.gpus if (r := self.store.read(g.uid)) is not None and r.pid != os.getpid()]
        for g, rec in held:
            if owner_alive(rec):
                raise UserError(f"the clocks of {g.name} ({g.uid}) are held by voltana {rec.describe()} on "
                                f"{rec.host}: stop that process first, or use another GPU", field="gpu")
        for g, rec in held:
            g.reset_clocks()
            self.store.remove(g.uid)
            msg = (f"{g.name}: voltana {rec.describe()} locked its clocks at {rec.clock_mhz} MHz and is gone; "
                   "the clocks are reset now")
            self.notices.append(msg)
            if self._on_notice:
                self._on_notice(msg)

    def __enter__(self) -> ClockGuard:
        self._take_over()
        # Python only lets the main thread install signal handlers; elsewhere the caller's own handling stands.
        if threading.current_thread() is threading.main_thread():
            for s in _RESET_SIGNALS:
                self._old[s] = signal.signal(s, self._on_signal)
        return self

    @staticmethod
    def _on_signal(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def set(self, clock_mhz: int) -> None:
        """Lock every GPU's SM clock to ``clock_mhz`` (no-op when not locking)."""
        if not self.lock:
            return
        for g in self.gpus:
            if g not in self.touched:
                if self.store is not None:  # durable before the first lock; later changes keep the record
                    self.store.record(g.uid, g.name, clock_mhz)
                self.touched.append(g)  # before the call: a half-applied lock is still reset
            g.lock_clocks(clock_mhz, clock_mhz)

    def restore(self) -> None:
        """Reset every GPU locked so far; a failure is recorded (and reported) and the others still reset."""
        for g in self.touched:
            try:
                g.reset_clocks()
                if self.store is not None:
                    self.store.remove(g.uid)  # kept when the reset failed: the next run retries it
            except Exception as exc:  # noqa: BLE001  (keep resetting the others; report every failure)
                msg = f"could not reset the clocks of {g.name}: {exc}; run `nvidia-smi -rgc` as root"
                self.reset_errors.append(msg)
                if self._on_err:
                    self._on_err(msg)
        self.touched = []

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        pending: list[int] = []
        for s in self._old:  # a signal during the reset is held back until the reset is done
            signal.signal(s, lambda signum, frame: pending.append(signum))
        try:
            self.restore()
        finally:
            for s, old in self._old.items():
                signal.signal(s, old)
            self._old = {}
        if pending and exc_type is None:
            raise SystemExit(128 + pending[0])
