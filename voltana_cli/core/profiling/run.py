"""``voltana profile`` as a library call: check the request, hand it to its backend, return a validated
``Profile`` with its metadata. Every backend changes clocks only inside a ``ClockGuard``, so they are
restored however the run ends."""

from __future__ import annotations

from collections.abc import Callable

from voltana_cli.core.hardware import GpuDevice
from voltana_cli.core.models.profile import Profile
from voltana_cli.core.profiling.request import ProfileRequest, RunHooks
from voltana_cli.core.profiling.sglang_backend import profile_sglang
from voltana_cli.core.profiling.sim_backend import profile_sim
from voltana_cli.core.profiling.torch_backend import profile_torch


def run_profile(req: ProfileRequest, on_start: Callable[[int], None] | None = None,
                on_window: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None,
                gpu: GpuDevice | None = None) -> Profile:
    """Run the profile described by ``req``; clocks are restored however this returns.

    Args:
        req: what to profile.
        on_start: told the number of timed windows once the plan is known.
        on_window: told each window's phase as it ends.
        warn: told what the caller should know but that does not stop the run (e.g. a failed clock reset).
        gpu: sim backend only: the card whose clocks are locked while modelling (default: an ``EmulatedGpu``
            of the requested spec). The measuring backends open their GPUs through NVML.

    Returns:
        The profile, validated, with its metadata; not yet written anywhere.

    Raises:
        UserError: the request cannot be run (the message names the field).
        ValueError: ``gpu`` given to a measuring backend.
    """
    req.check()
    hooks = RunHooks(on_start, on_window, warn)
    if req.backend == "sim":
        return profile_sim(req, hooks, gpu)
    if gpu is not None:
        raise ValueError(f"gpu is for the sim backend; the {req.backend} backend opens its GPUs through NVML")
    if req.backend == "sglang":
        return profile_sglang(req, hooks)
    return profile_torch(req, hooks)
