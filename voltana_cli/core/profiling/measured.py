"""What the measuring backends (torch, sglang) share: which clocks to profile on a real GPU, the voltana
GPU key of a device name, and the warning when the energy counter gave nothing."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import GpuDevice
from voltana_cli.core.models.specs import GpuSpec, available_gpus, gpu_spec
from voltana_cli.core.profiling.request import ProfileRequest


def gpu_clocks(req: ProfileRequest, gpu: GpuDevice, identity: dict[str, Any]) -> list[int]:
    """Clocks to profile on a real GPU.

    Args:
        req: the request (its ``clocks_mhz`` and ``lock_clocks``).
        gpu: the GPU.
        identity: ``gpu.identity()`` (its ``clocks_available_mhz``).

    Returns:
        With ``lock_clocks``, the requested clocks (default: the current one); without it, only the clock
        the card runs at now.

    Raises:
        UserError: several clocks without ``lock_clocks``, or a clock the card does not support.
    """
    if not req.lock_clocks:
        if req.clocks_mhz and len(req.clocks_mhz) > 1:
            raise UserError("several clocks need lock_clocks (without it the card runs at its own clock)",
                            field="clocks_mhz")
        return [gpu.sm_clock_mhz()]
    clocks = req.clocks_mhz or [gpu.sm_clock_mhz()]
    avail = set(identity["clocks_available_mhz"])
    bad = [c for c in clocks if c not in avail]
    if bad:
        raise UserError(f"{bad[0]} MHz: this GPU supports {min(avail)}-{max(avail)} MHz in its own steps; "
                        "pick from `nvidia-smi -q -d SUPPORTED_CLOCKS`", field="clocks_mhz")
    return clocks


def _same_card(spec: GpuSpec, low: str) -> bool:
    """Whether a lower-cased device name (which varies by driver and form factor, e.g. "nvidia h100 sxm5
    80gb") names the card of ``spec``: the same GPU family and memory size, and not a PCIe card when the
    spec is an SXM one."""
    family = re.search(r"[a-z]\d{3}", spec.display_name.lower())
    if family is None or family.group(0) not in low:
        return False
    if f"{spec.memory_gib:g}gb" not in low.replace(" ", ""):
        return False
    return not ("sxm" in spec.name and "pcie" in low)


def gpu_key_for(name: str) -> str:
    """voltana's GPU key for a device name (e.g. "NVIDIA H100 80GB HBM3" -> h100-80g-sxm), else a slug of
    the name."""
    low = name.lower()
    keys = available_gpus()
    for key in keys:
        display = gpu_spec(key).display_name.lower()
        if display in low or low in display:
            return key
    for key in keys:
        if _same_card(gpu_spec(key), low):
            return key
    return re.sub(r"[^a-z0-9]+", "-", low).strip("-") or "unknown-gpu"


def warn_if_no_energy(rows: list[dict], gpus: list[GpuDevice], warn: Callable[[str], None] | None) -> None:
    """Warn when GPUs were read but no row got an energy reading (the counter is missing or never moved)."""
    if gpus and warn and not any(np.isfinite(r["energy_j"]) for r in rows):
        warn("the GPU's energy counter gave no readings: energy_j is empty (unavailable), not 0")
