"""Policies: a frequency controller for each phase plus a decode router, selected by name.

Names: ``static-max``, ``static-min`` (the lowest EcoFreq level), ``static:<MHz>``, ``ecofreq``,
``voltana`` (= ``ecofreq`` with the tile-aware router). A ``+<router>`` suffix picks the decode router
(``round-robin``, ``tile-aware``, ``least-loaded``); the default is round-robin, except for ``voltana``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voltana_cli.core.policy.controller import EcoFreqController, FrequencyController, StaticController
from voltana_cli.core.errors import UserError
from voltana_cli.core.models.analytical import PerfModel
from voltana_cli.core.models.predictors import LatencyPredictor, ModelPredictor
from voltana_cli.core.policy.router import LeastLoadedRouter, RoundRobinRouter, Router, TileAwareRouter


@dataclass(frozen=True)
class EcoFreqParams:
    """EcoFreq's knobs (PAPER.md §3 defaults)."""

    clocks_mhz: tuple[int, ...] | None = None  # None: the GPU's paper-like pair (see default_levels)
    margin: float = 0.35
    min_hold_ms: float = 50.0
    idle_timeout_s: float = 5.0
    prediction_error: float = 0.05


@dataclass(frozen=True)
class PolicyContext:
    """What building a policy needs."""

    model: PerfModel
    slo_ttft_s: float
    slo_itl_s: float
    rng: np.random.Generator
    ecofreq: EcoFreqParams = field(default_factory=EcoFreqParams)
    tile: int | None = None  # decode batch-size boundary for tile-aware routing; None: the engine's GEMM tile
    predictor: LatencyPredictor | None = None  # e.g. a fitted EcoPred; None: the analytical model with error


@dataclass
class Policy:
    """One built policy: fresh controllers per instance and one decode router."""

    name: str
    make_prefill_controller: Callable[[], FrequencyController]
    make_decode_controller: Callable[[], FrequencyController]
    decode_router: Router


def default_levels(model: PerfModel) -> tuple[int, ...]:
    """The paper's two levels, generalised: the max clock and the supported clock nearest 71.3 % of it
    (1005 MHz on A100's 1410)."""
    clocks = model.clocks
    target = model.f_max * 1005.0 / 1410.0
    low = min(clocks, key=lambda c: abs(c - target))
    return (low, clocks[-1])


ROUTERS: dict[str, Callable[[PolicyContext], Router]] = {
    "round-robin": lambda ctx: RoundRobinRouter(),
    "least-loaded": lambda ctx: LeastLoadedRouter(),
    "tile-aware": lambda ctx: TileAwareRouter(ctx.tile or ctx.model.engine.gemm_tile),
}

FREQ_POLICIES = ("static-max", "static-min", "static:<MHz>", "ecofreq", "voltana")


def _static(clock: int) -> Callable[[], FrequencyController]:
    return lambda: StaticController(clock)


def build_policy(name: str, ctx: PolicyContext) -> Policy:
    """Build policy ``name``; an unknown name or clock fails with the valid choices."""
    freq, _, router_name = name.partition("+")
    router_name = router_name or ("tile-aware" if freq == "voltana" else "round-robin")
    if router_name not in ROUTERS:
        raise UserError(f"unknown router {router_name!r} in policy {name!r}: use one of {', '.join(ROUTERS)}")
    router = ROUTERS[router_name](ctx)
    m = ctx.model
    if freq == "static-max":
        mk = _static(m.clocks[-1])
        return Policy(name, mk, mk, router)
    if freq == "static-min":
        # The lowest EcoFreq level (1005 MHz on A100: the paper's low static baseline), not the GPU's floor
        # (210 MHz on A100, which no one serves at); static:<MHz> reaches any supported clock.
        mk = _static(min(ctx.ecofreq.clocks_mhz or default_levels(m)))
        return Policy(name, mk, mk, router)
    if freq.startswith("static:"):
        try:
            clock = int(freq.split(":", 1)[1])
        except ValueError:
            raise UserError(f"policy {name!r}: write a static clock as static:<MHz>, e.g. static:1005") from None
        m.check_clock(clock)
        mk = _static(clock)
        return Policy(name, mk, mk, router)
    if freq in ("ecofreq", "voltana"):
        p = ctx.ecofreq
        levels = list(p.clocks_mhz or default_levels(m))
        for c in levels:
            m.check_clock(c)
        if p.margin < -0.5 or p.margin > 2:
            raise UserError(f"EcoFreq margin {p.margin} is outside [-0.5, 2]: the paper uses 0.35")
        if ctx.predictor is not None:
            predictor = ctx.predictor
            prepare = getattr(predictor, "prepare", None)
            if prepare is not None:
                prepare(levels)  # fails now, with the fitted range, if a level is outside it
        else:
            predictor = ModelPredictor(m, p.prediction_error, ctx.rng, levels)

        def make(phase: str, slo: float) -> Callable[[], FrequencyController]:
            return lambda: EcoFreqController(
                phase, predictor, levels, slo, margin=p.margin, min_hold_s=p.min_hold_ms / 1e3,
                idle_timeout_s=p.idle_timeout_s,
            )

        return Policy(name, make("prefill", ctx.slo_ttft_s), make("decode", ctx.slo_itl_s), router)
    raise UserError(
        f"unknown policy {name!r}: use one of {', '.join(FREQ_POLICIES)}, optionally +{'/+'.join(ROUTERS)}"
    )
