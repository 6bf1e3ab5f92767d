"""A real GPU through NVML.

This is the only module that touches ``pynvml`` (the ``nvidia-ml-py`` package), and only when an
``NvmlGpu`` is constructed: the sim backend and the tests of everything else run without it. Energy is
read from NVML's 64-bit total-energy counter (mJ since driver load) and returned as joules in a float, so
it never wraps the way a 32-bit sum does. Setting clocks needs root or CAP_SYS_ADMIN; a refusal becomes a
``UserError`` about ``lock_clocks`` that says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware.device import LOCK_HINT


def import_pynvml() -> ModuleType:
    """The ``pynvml`` module.

    Raises:
        UserError: the optional NVML bindings are not installed.
    """
    try:
        import pynvml  # noqa: PLC0415  (optional dependency, imported only for real GPUs)
    except ImportError:
        raise UserError("NVML bindings are not installed: pip install 'voltana[gpu]' (the nvidia-ml-py package)") from None
    return pynvml


def visible_device(index: int, env: str | None) -> tuple[str, int | str]:
    """Map a CUDA device index to NVML, honouring ``CUDA_VISIBLE_DEVICES``.

    Args:
        index: the CUDA device index (as PyTorch numbers the visible devices).
        env: the value of ``CUDA_VISIBLE_DEVICES`` (``None`` or empty: every device is visible).

    Returns:
        ``("index", physical_index)`` or ``("uuid", uuid)``.

    Raises:
        UserError: ``index`` is not among the visible devices.
    """
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
        uuid = self._call("read the GPU UUID", self._nvml.nvmlDeviceGetUUID, self._h, missing_ok=True)
        self.uid = uuid.decode() if isinstance(uuid, bytes) else str(uuid) if uuid is not None else f"{kind}-{ident}"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, missing_ok: bool = False) -> Any:
        nv = self._nvml
        try:
            return fn(*args)
        except nv.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == nv.NVML_ERROR_NO_PERMISSION:
                raise UserError(f"NVML refused to {what}: {LOCK_HINT}", field="lock_clocks") from None
            if code == nv.NVML_ERROR_NOT_SUPPORTED:
                if missing_ok:
                    return None
                raise UserError(f"this GPU ({getattr(self, 'name', 'unknown')}) does not support: {what} (NVML)") from None
            if code in (getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", -1), getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", -1)):
                raise UserError(f"no NVIDIA driver found ({exc}): use the sim backend, or run on a machine with a GPU",
                                field="backend") from None
            raise UserError(f"NVML failed to {what}: {exc}") from None

    def supported_clocks_mhz(self) -> list[int]:
        """SM clocks the card supports at its highest memory clock, ascending."""
        nv = self._nvml
        mems = self._call("list memory clocks", nv.nvmlDeviceGetSupportedMemoryClocks, self._h)
        mem = max(mems)
        return sorted({int(c) for c in self._call("list SM clocks", nv.nvmlDeviceGetSupportedGraphicsClocks, self._h, mem)})

    def sm_clock_mhz(self) -> int:
        """The SM clock the card runs at now."""
        return int(self._call("read the SM clock", self._nvml.nvmlDeviceGetClockInfo, self._h, self._nvml.NVML_CLOCK_SM))

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock to ``min_mhz``-``max_mhz`` (needs admin rights)."""
        self._call(f"lock the SM clock to {min_mhz}-{max_mhz} MHz", self._nvml.nvmlDeviceSetGpuLockedClocks,
                   self._h, int(min_mhz), int(max_mhz))

    def reset_clocks(self) -> None:
        """Undo ``lock_clocks``: the card picks its own SM clock again."""
        self._call("reset the locked SM clock", self._nvml.nvmlDeviceResetGpuLockedClocks, self._h)

    def energy_j(self) -> float | None:
        """Total energy since driver load, in joules (the counter is mJ, 64-bit); ``None`` if unsupported."""
        mj = self._call("read the energy counter", self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._h, missing_ok=True)
        return None if mj is None else int(mj) / 1000.0

    def power_w(self) -> float | None:
        """The power draw now, in watts; ``None`` if unsupported."""
        mw = self._call("read power", self._nvml.nvmlDeviceGetPowerUsage, self._h, missing_ok=True)
        return None if mw is None else int(mw) / 1000.0

    def identity(self) -> dict[str, Any]:
        """What a profile's metadata records of the card: name, driver, power limit, memory and SM clocks."""
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
        """Shut NVML down (best effort: nothing is left to undo if it fails)."""
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass
