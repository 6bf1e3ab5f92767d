"""The ``sim`` profile backend: rows from the analytical model with lognormal measurement noise.

The emulated card's clock really is locked to each profiled clock, through the same ``ClockGuard`` as a
real GPU, so the sim backend exercises the clock handling the measuring backends rely on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from voltana_cli import __version__
from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import ClockGuard, EmulatedGpu, GpuDevice
from voltana_cli.core.models.analytical import PerfModel, prefill_pairs
from voltana_cli.core.models.profile import Profile, ProfileMeta, Protocol, make_frame, now_iso, validate_frame, window_row
from voltana_cli.core.models.specs import EngineSpec, GpuSpec, ModelSpec, engine_spec, gpu_spec, model_spec
from voltana_cli.core.profiling.plan import (
    DEFAULT_KV_PER_REQUEST,
    DEFAULT_PREFILL_SEQS,
    DEFAULT_PREFILL_TOKENS,
    ProfilePlan,
    default_clocks,
)
from voltana_cli.core.profiling.request import PlanDefaults, ProfileRequest, RunHooks, plan_for

#: The largest default batch size the sim backend profiles.
SIM_MAX_BATCH = 1024
#: The upper bound of ``noise``: beyond it the lognormal factors stop looking like measurement noise.
MAX_NOISE = 0.5


def _check_clocks(model: PerfModel, clocks: Sequence[int]) -> None:
    """Every clock must be one the model supports; the error is about the profile's ``clocks_mhz``."""
    for c in clocks:
        try:
            model.check_clock(c)
        except UserError as exc:
            raise UserError(exc.problem, field="clocks_mhz") from None


def run_sim(
    plan: ProfilePlan,
    model: PerfModel,
    guard: ClockGuard,
    noise: float,
    rng: np.random.Generator,
    on_window: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """Rows from the analytical model with lognormal measurement noise.

    Latency gets ``noise`` and energy an independent half of it on top (power is measured more steadily
    than time).

    Args:
        plan: what to model.
        model: the analytical model.
        guard: locks each clock in turn.
        noise: the lognormal sigma of latency (0.03 = 3 %).
        rng: the noise's random numbers.
        on_window: told the phase after each row.

    Yields:
        One row dict per modelled window.

    Raises:
        UserError: ``noise`` out of range, a clock the model does not support, or a batch above its maximum.
    """
    if not 0 <= noise <= MAX_NOISE:  # NaN fails this too
        raise UserError(f"{noise} is out of range: use a relative noise between 0 and {MAX_NOISE} (e.g. 0.03 for 3 %)",
                        field="noise")
    _check_clocks(model, plan.clocks_mhz)
    for clock in plan.clocks_mhz:
        guard.set(clock)
        for r in range(plan.repeats):
            if "prefill" in plan.phases:
                for t, n in plan.prefill_configs():
                    lat, en = model.prefill_cost(t, clock, n, prefill_pairs(t, n))
                    yield _noisy("prefill", clock, n, t, lat, en, r, noise, rng)
                    if on_window:
                        on_window("prefill")
            if "decode" in plan.phases:
                for b, kv in plan.decode_configs():
                    _check_batch(b, model)
                    lat, en = model.decode_cost(b, kv, clock)
                    yield _noisy("decode", clock, b, kv, lat, en, r, noise, rng)
                    if on_window:
                        on_window("decode")


def _check_batch(batch: int, model: PerfModel) -> None:
    if batch > model.max_batch:
        raise UserError(f"{batch} is above the modelled maximum {model.max_batch}", field="batch_sizes")


def _noisy(phase: str, clock: int, b: int, tokens: int, lat: float, en: float, r: int, noise: float,
           rng: np.random.Generator) -> dict:
    if noise > 0:
        et = math.exp(noise * rng.standard_normal() - 0.5 * noise * noise)
        ep = math.exp(0.5 * noise * rng.standard_normal() - 0.125 * noise * noise)
    else:
        et = ep = 1.0
    return window_row(phase, clock, b, tokens, lat * et, en * et * ep, r)


def profile_sim(req: ProfileRequest, hooks: RunHooks, gpu: GpuDevice | None = None) -> Profile:
    """Model the profile ``req`` asks for.

    Args:
        req: the request (``backend`` sim).
        hooks: progress and warnings.
        gpu: the card whose clocks are locked while modelling (default: an ``EmulatedGpu`` of the spec).

    Raises:
        UserError: an unknown spec, a clock or batch the model does not support, or an invalid plan.
    """
    spec, model, engine = gpu_spec(req.gpu_key()), model_spec(req.model_key()), engine_spec()
    tp = req.tp or model.default_tp
    pm = PerfModel(spec, model, engine, tp=tp)
    clocks = req.clocks_mhz or default_clocks(spec)
    _check_clocks(pm, clocks)
    dflt = PlanDefaults(kv_per_request=DEFAULT_KV_PER_REQUEST, prefill_tokens=DEFAULT_PREFILL_TOKENS,
                        prefill_seqs=DEFAULT_PREFILL_SEQS, warmup=0, cooldown_s=0.0, min_window_s=0.0,
                        max_batch=SIM_MAX_BATCH, graph_max=engine.cuda_graph_max_bs)
    plan = plan_for(req, clocks, pm.kv_capacity_tokens, dflt, max_context=model.max_context_tokens)
    for name in ("warmup", "cooldown_s", "min_window_s"):
        # A modelled window has no warm-up, cool-down or length to honour: recording one would be a lie.
        if getattr(req, name):
            raise UserError(f"{getattr(req, name)} is for the measuring backends (torch, sglang); the sim backend "
                            "models each window exactly: leave it out", field=name)
    _check_batch(max(plan.batch_sizes), pm)
    device = gpu if gpu is not None else EmulatedGpu(spec)
    if hooks.on_start:
        hooks.on_start(plan.windows)
    rows: list[dict] = []
    with ClockGuard([device], lock=True, on_reset_error=hooks.warn) as guard:
        rows.extend(run_sim(plan, pm, guard, req.noise, np.random.default_rng(req.seed), hooks.on_window))
    return Profile(validate_frame(make_frame(rows), "profile"), _sim_meta(req, spec, model, engine, tp, plan), "<new>")


def _sim_meta(req: ProfileRequest, gpu: GpuSpec, model: ModelSpec, engine: EngineSpec, tp: int,
              plan: ProfilePlan) -> ProfileMeta:
    return ProfileMeta(
        gpu=gpu.name, gpu_name=gpu.display_name, driver=None, power_limit_w=gpu.power_limit_w,
        clocks_available_mhz=gpu.clocks_mhz, memory_clock_mhz=gpu.memory_clock_mhz, tp=tp, engine=engine.name,
        engine_version="modelled", model=model.name, backend="sim", device="emulated",
        protocol=Protocol(warmup=plan.warmup, repeats=plan.repeats, cooldown_s=plan.cooldown_s,
                          min_window_s=plan.min_window_s, noise=req.noise),
        clocks_locked=True, clock_note="modelled: each row is at exactly its clock_mhz",
        voltana_version=__version__, created=now_iso(),
        notes=[f"analytical model {gpu.name} x {model.name} (tp {tp}, {engine.name}); lognormal latency noise "
               f"sigma {req.noise:g}, seed {req.seed}", *req.notes],
    )
