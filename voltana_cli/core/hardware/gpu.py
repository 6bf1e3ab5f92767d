"""GPU access: one interface, an NVML implementation and an emulated one.

Only ``NvmlGpu`` touches ``pynvml`` (the ``nvidia-ml-py`` package), and only when constructed. Energy is
read from NVML's 64-bit total-energy counter (mJ since driver load) and returned as joules in a float, so
it never wraps the way a 32-bit sum does. Setting clocks needs root or CAP_SYS_ADMIN; a refusal becomes a
``UserError`` that says so and suggests ``--no-lock-clocks``.

``ClockGuard`` is how voltana changes clocks: every lock goes through it, and it resets every GPU it
touched when the ``with`` block ends, whether normally, by an exception, Ctrl-C, SIGTERM or SIGHUP (those
two signals are turned into ``SystemExit`` while the guard is active). It never relies on ``__del__``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Protocol

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.specs import GpuSpec

LOCK_HINT = (
    "locking GPU clocks needs admin rights (root or CAP_SYS_ADMIN): run as root, or measure at the "
    "current clock with --no-lock-clocks"
)


class GpuDevice(Protocol):
    """What voltana needs of a GPU."""

    name: str

    def supported_clocks_mhz(self) -> list[int]: ...

    def sm_clock_mhz(self) -> int: ...

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None: ...

    def reset_clocks(self) -> None: ...

    def energy_j(self) -> float | None: ...

    def power_w(self) -> float | None: ...

    def identity(self) -> dict[str, Any]: ...


# ---- NVML -----------------------------------------------------------------------------------------------
def import_pynvml() -> ModuleType:
    try:
        import pynvml  # noqa: PLC0415  (optional dependency, imported only for real GPUs)
    except ImportError:
        raise UserError("NVML bindings are not installed: pip install 'voltana[gpu]' (the nvidia-ml-py package)") from None
    return pynvml


def visible_device(index: int, env: str | None) -> tuple[str, int | str]:
    """Map a CUDA device index to NVML: ``("index", physical)`` or ``("uuid", uuid)``, honouring
    ``CUDA_VISIBLE_DEVICES``."""
    if env is None or env.strip() == "":
        return ("index", index)
    ids = [x.strip() for x in env.split(",") if x.strip()]
    if index >= len(ids):
        raise UserError(f"GPU {index} is not visible: CUDA_VISIBLE_DEVICES={env!r} exposes {len(ids)} device(s)")
    ident = ids[index]
    if ident.isdigit():
        return ("index", int(ident))
    return ("uuid", ident)


class NvmlGpu:
    """One GPU through NVML.

    Args:
        index: CUDA device index (mapped through ``CUDA_VISIBLE_DEVICES``).
        nvml: the ``pynvml`` module; tests pass an autospec'd stand-in.
    """

    def __init__(self, index: int = 0, nvml: ModuleType | None = None):
        self._nvml = nvml if nvml is not None else import_pynvml()
        self._call("initialise NVML", self._nvml.nvmlInit, missing_ok=False)
        kind, ident = visible_device(index, os.environ.get("CUDA_VISIBLE_DEVICES"))
        if kind == "index":
            self._h = self._call(f"open GPU {ident}", self._nvml.nvmlDeviceGetHandleByIndex, ident)
        else:
            self._h = self._call(f"open GPU {ident}", self._nvml.nvmlDeviceGetHandleByUUID, ident)
        name = self._call("read the GPU name", self._nvml.nvmlDeviceGetName, self._h)
        self.name = name.decode() if isinstance(name, bytes) else str(name)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False) -> Any:
        nv = self._nvml
        try:
            return fn(*args)
        except nv.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == nv.NVML_ERROR_NO_PERMISSION:
                raise UserError(f"NVML refused to {what}: {LOCK_HINT}") from None
            if code == nv.NVML_ERROR_NOT_SUPPORTED:
                if missing_ok:
                    return None
                raise UserError(f"this GPU ({getattr(self, 'name', 'unknown')}) does not support: {what} (NVML)") from None
            if code in (getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", -1), getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", -1)):
                raise UserError(f"no NVIDIA driver found ({exc}): use --backend sim, or run on a machine with a GPU") from None
            raise UserError(f"NVML failed to {what}: {exc}") from None

    def supported_clocks_mhz(self) -> list[int]:
        nv = self._nvml
        mems = self._call("list memory clocks", nv.nvmlDeviceGetSupportedMemoryClocks, self._h)
        mem = max(mems)
        return sorted({int(c) for c in self._call("list SM clocks", nv.nvmlDeviceGetSupportedGraphicsClocks, self._h, mem)})

    def sm_clock_mhz(self) -> int:
        return int(self._call("read the SM clock", self._nvml.nvmlDeviceGetClockInfo, self._h, self._nvml.NVML_CLOCK_SM))

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None:
        self._call(f"lock the SM clock to {min_mhz}-{max_mhz} MHz", self._nvml.nvmlDeviceSetGpuLockedClocks,
                   self._h, int(min_mhz), int(max_mhz))

    def reset_clocks(self) -> None:
        self._call("reset the locked SM clock", self._nvml.nvmlDeviceResetGpuLockedClocks, self._h)

    def energy_j(self) -> float | None:
        """Total energy since driver load, in joules (the counter is mJ, 64-bit); ``None`` if unsupported."""
        mj = self._call("read the energy counter", self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._h, missing_ok=True)
        return None if mj is None else int(mj) / 1000.0

    def power_w(self) -> float | None:
        mw = self._call("read power", self._nvml.nvmlDeviceGetPowerUsage, self._h, missing_ok=True)
        return None if mw is None else int(mw) / 1000.0

    def identity(self) -> dict[str, Any]:
        nv = self._nvml
        drv = self._call("read the driver version", nv.nvmlSystemGetDriverVersion, missing_ok=True)
        lim = self._call("read the power limit", nv.nvmlDeviceGetEnforcedPowerLimit, self._h, missing_ok=True)
        mems = self._call("list memory clocks", nv.nvmlDeviceGetSupportedMemoryClocks, self._h, missing_ok=True)
        return {
            "gpu_name": self.name,
            "driver": drv.decode() if isinstance(drv, bytes) else drv,
            "power_limit_w": None if lim is None else int(lim) / 1000.0,
            "memory_clock_mhz": int(max(mems)) if mems else None,
            "clocks_available_mhz": self.supported_clocks_mhz(),
        }

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


# ---- emulated -----------------------------------------------------------------------------------------
class EmulatedGpu:
    """A GPU made of a spec: supported clocks, locking, and an energy counter integrating power over time.

    The emulated card idles at its maximum clock when unlocked (like a boosting GPU). ``busy_power_w`` is
    added while set, so a caller can emulate load. ``state_file`` (optional) mirrors the lock state as JSON
    on every change, so another process (a test) can see whether the clocks were restored.
    """

    def __init__(
        self,
        spec: GpuSpec,
        clock: Callable[[], float] = time.monotonic,
        idle_power: Callable[[int], float] | None = None,
        state_file: str | Path | None = None,
        allow_lock: bool = True,
    ):
        self.spec = spec
        self.name = spec.display_name
        self._now = clock
        self._idle = idle_power or (lambda f: spec.calibration.static_power_w + spec.calibration.clock_power_w_per_mhz * f)
        self._state_file = Path(state_file) if state_file else None
        self._allow_lock = allow_lock
        self.locked: tuple[int, int] | None = None
        self.busy_power_w = 0.0
        self.lock_calls: list[tuple[int, int] | None] = []
        self._energy = 0.0
        self._t = self._now()
        self._write_state()

    def _write_state(self) -> None:
        if self._state_file is None:
            return
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"locked": self.locked, "calls": len(self.lock_calls)}))
        os.replace(tmp, self._state_file)

    def _advance(self) -> None:
        t = self._now()
        self._energy += (t - self._t) * (self._idle(self.sm_clock_mhz()) + self.busy_power_w)
        self._t = t

    def supported_clocks_mhz(self) -> list[int]:
        return list(self.spec.clocks_mhz)

    def sm_clock_mhz(self) -> int:
        return self.locked[1] if self.locked else self.spec.max_clock_mhz

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None:
        if not self._allow_lock:
            raise UserError(f"emulated GPU refused to lock clocks: {LOCK_HINT}")
        if min_mhz > max_mhz or min_mhz not in self.spec.clocks_mhz or max_mhz not in self.spec.clocks_mhz:
            raise UserError(f"{self.name} cannot lock {min_mhz}-{max_mhz} MHz: use supported clocks")
        self._advance()
        self.locked = (int(min_mhz), int(max_mhz))
        self.lock_calls.append(self.locked)
        self._write_state()

    def reset_clocks(self) -> None:
        self._advance()
        self.locked = None
        self.lock_calls.append(None)
        self._write_state()

    def energy_j(self) -> float | None:
        self._advance()
        return self._energy

    def power_w(self) -> float | None:
        return self._idle(self.sm_clock_mhz()) + self.busy_power_w

    def identity(self) -> dict[str, Any]:
        return {
            "gpu_name": self.name, "driver": "emulated", "power_limit_w": self.spec.power_limit_w,
            "memory_clock_mhz": None, "clocks_available_mhz": self.supported_clocks_mhz(),
        }


# ---- restoring clocks on every exit path ------------------------------------------------------------
_RESET_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class ClockGuard:
    """Context manager through which voltana locks clocks; resets every GPU it locked on exit.

    ``lock=False`` makes ``set`` a no-op that records the request: the caller measures at whatever clock
    the card runs (and says so). Signals (SIGTERM, SIGHUP) raise ``SystemExit(128 + signum)`` inside the
    block when it runs on the main thread, so the reset in ``__exit__`` runs before the process ends.
    """

    def __init__(self, gpus: list[GpuDevice], lock: bool = True, on_reset_error: Callable[[str], None] | None = None):
        self.gpus = gpus
        self.lock = lock
        self.touched: list[GpuDevice] = []
        self._old: dict[int, Any] = {}
        self._on_err = on_reset_error
        self.reset_errors: list[str] = []

    def __enter__(self) -> ClockGuard:
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
                self.touched.append(g)  # before the call: a half-applied lock is still reset
            g.lock_clocks(clock_mhz, clock_mhz)

    def restore(self) -> None:
        for g in self.touched:
            try:
                g.reset_clocks()
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
