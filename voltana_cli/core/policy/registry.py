"""The policy registry: every controller and router by name, with typed parameters; one list for all.

A policy name is ``<controller>[:<argument>][+<router>]``: ``static-max``, ``static:1200``,
``ecofreq+least-loaded``, ``voltana``. Controllers and routers are registered once, here for the pure ones;
an entry that needs more than the pure core (the oracle reads the simulator's truth; static-best is found by
search) is registered by the layer that owns it through ``REGISTRY.add_controller``, so this package stays
free of the worlds. ``bench`` (and ``tune`` and ``serve``) build, list and document policies only through
the registry: an unknown name fails listing the valid ones, and a duplicate registration is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from voltana_cli.core.errors import UserError
from voltana_cli.core.policy.controller import EcoFreqController, FrequencyController, StaticController
from voltana_cli.core.policy.feedback import FeedbackController, FeedbackParams, TunedPolicy
from voltana_cli.core.policy.oracle import OracleController
from voltana_cli.core.policy.predictive import PredictiveRouter
from voltana_cli.core.policy.predictor import Predictor
from voltana_cli.core.policy.router import LeastLoadedRouter, RandomRouter, RoundRobinRouter, Router, TileAwareRouter

ControllerFactory = Callable[[], FrequencyController]


#: EcoFreq's targets as the VoltanaLLM run scripts set them, as margins on each phase's SLO. The client
#: (``voltana-llm-scripts/demo/client.sh``, ``slo_list=(45)``) posts ``slo_p50: 45`` to the router, which
#: forwards it to the decode instances and ten times it (450 ms) to the prefill instances (``mini_lb.py``,
#: ``set_freq_manager_state``); of the paper's SLOs (TTFT 800 ms, ITL 50 ms) that is 0.5625 and 0.9. The
#: published margin (0.35, looser) never reached a server through those scripts: ``--freq-manager-slo margin
#: 0.35`` does not parse. ``docs/notes/voltanallm-reference.md`` has the evidence; ``EcoFreqController`` says
#: what each reading does to the paper's figure.
PAPER_RUN_MARGINS = {"prefill": 450 / 800 - 1, "decode": 45 / 50 - 1}
#: The router that picks prefill instances where none is named: the paper's reference load balancer picks
#: them at random for every policy.
DEFAULT_PREFILL_ROUTER = "random"


@dataclass(frozen=True)
class EcoFreqParams:
    """EcoFreq's knobs (PAPER.md §3 defaults).

    Attributes:
        clocks_mhz: the clock levels; ``None``: the GPU's EcoFreq levels from spec data.
        margin: each phase's target is ``slo * (1 + margin)``; ``None``: the targets the paper's run scripts
            set, ``PAPER_RUN_MARGINS`` (decode 45 ms and prefill 450 ms of a 50 ms ITL and 800 ms TTFT SLO).
        min_hold_ms: how long a clock is held before the controller may lower it (anti-flap).
        idle_timeout_s: idle time after which the instance drops to its lowest level.
    """

    clocks_mhz: tuple[int, ...] | None = None
    margin: float | None = None
    min_hold_ms: float = 50.0
    idle_timeout_s: float = 5.0


@dataclass(frozen=True)
class PolicyContext:
    """What building a policy needs, all of it plain data and a predictor (no model, no world).

    Attributes:
        clocks_mhz: the clocks the instances may run at, ascending (the ground truth's supported range).
        levels_mhz: the GPU's default EcoFreq levels (spec data).
        slo_ttft_s: TTFT SLO (s).
        slo_itl_s: ITL SLO (s).
        predictor: what EcoFreq-like controllers predict with (never the ground truth).
        tile: the decode batch-size boundary the tile-aware router keeps instances below.
        ecofreq: EcoFreq's parameters.
        prefill_router: the registered router that picks each request's prefill instance (``random``: as
            the paper's reference load balancer does for every policy).
        seed: seeds the routers that draw (``random``); the same seed gives every policy the same draws.
        tuned: the tuned knobs ``voltana-tuned`` runs with (``None``: none given).
    """

    clocks_mhz: tuple[int, ...]
    levels_mhz: tuple[int, ...]
    slo_ttft_s: float
    slo_itl_s: float
    predictor: Predictor
    tile: int
    ecofreq: EcoFreqParams = field(default_factory=EcoFreqParams)
    prefill_router: str = DEFAULT_PREFILL_ROUTER
    seed: int = 0
    tuned: TunedPolicy | None = None

    def feedback(self) -> TunedPolicy:
        """The feedback knobs in force: the tuned ones, else the untuned default for these clocks."""
        return self.tuned or TunedPolicy.default_for(self.clocks_mhz, self.levels)

    def check_clock(self, clock_mhz: int, what: str) -> int:
        """``clock_mhz`` if the instances can run at it, else a ``UserError`` naming the valid range."""
        if clock_mhz not in self.clocks_mhz:
            c = self.clocks_mhz
            raise UserError(f"{what}: {clock_mhz} MHz is not a supported clock here; use one of {c[0]}-{c[-1]} MHz "
                            "in the GPU's own steps", field="policies")
        return clock_mhz

    @property
    def levels(self) -> tuple[int, ...]:
        """The EcoFreq levels in force: the parameters' if set, else the GPU's."""
        return self.ecofreq.clocks_mhz or self.levels_mhz


@dataclass
class Policy:
    """One built policy: fresh controllers per instance, a prefill router and a decode router."""

    name: str
    make_prefill_controller: ControllerFactory
    make_decode_controller: ControllerFactory
    decode_router: Router
    prefill_router: Router


@dataclass(frozen=True)
class ControllerEntry:
    """A registered frequency-control policy.

    Attributes:
        name: the name before any ``:`` (``static``, ``ecofreq``).
        summary: one line for help texts.
        build: ``(context, argument) -> (prefill factory, decode factory)``; the argument is the text after
            ``:`` or ``None``.
        argument: what the ``:`` argument is (``"MHz"``), or ``None`` when the entry takes none.
        default_router: the decode router used when the name has no ``+router``.
        params: the parameter type the entry reads from the context (documentation and tooling).
        clocks: the clocks its predictor must know (``None``: the EcoFreq levels).
        yardstick: it reads the world's ground truth (the oracle); reports flag it, live worlds refuse it.
        searched: it is not built from knobs but found by a search in the world that runs it (static-best:
            the pair of static clocks with the least energy that meets the rate's requirement); ``build``
            then refuses the bare name, and the world resolves it to the policy its search found. A searched
            entry that takes an argument is also a plain policy with it (``colocated:<MHz>``).
        layout: the cluster layout it runs on: ``pd`` (prefill and decode instances) or ``colocated`` (the
            same GPUs, each instance serving both phases).
        prefill_router: ``context -> name`` of the router the policy picks prefill instances with itself
            (``voltana-tuned``: its config's); where it is ``None`` or returns ``None``, the context's.
    """

    name: str
    summary: str
    build: Callable[[PolicyContext, str | None], tuple[ControllerFactory, ControllerFactory]]
    argument: str | None = None
    default_router: str = "round-robin"
    params: type | None = None
    clocks: Callable[[PolicyContext], list[int]] | None = None
    yardstick: bool = False
    searched: bool = False
    layout: str = "pd"
    prefill_router: Callable[[PolicyContext], str | None] | None = None

    @property
    def usage(self) -> str:
        if not self.argument:
            return self.name
        return f"{self.name}[:<{self.argument}>]" if self.searched else f"{self.name}:<{self.argument}>"


@dataclass(frozen=True)
class RouterEntry:
    """A registered decode router: ``build(context) -> Router``; ``clocks``: the clocks its predictor must
    know (``None``: it predicts nothing)."""

    name: str
    summary: str
    build: Callable[[PolicyContext], Router]
    clocks: Callable[[PolicyContext], list[int]] | None = None


class PolicyRegistry:
    """Controllers and routers by name; builds ``Policy`` objects from names."""

    def __init__(self) -> None:
        self._controllers: dict[str, ControllerEntry] = {}
        self._routers: dict[str, RouterEntry] = {}

    def add_controller(self, entry: ControllerEntry) -> None:
        """Register a controller; a name registered twice is an error."""
        if entry.name in self._controllers:
            raise ValueError(f"controller {entry.name!r} is already registered")
        self._controllers[entry.name] = entry

    def add_router(self, entry: RouterEntry) -> None:
        """Register a decode router; a name registered twice is an error."""
        if entry.name in self._routers:
            raise ValueError(f"router {entry.name!r} is already registered")
        self._routers[entry.name] = entry

    def controllers(self) -> list[ControllerEntry]:
        return list(self._controllers.values())

    def routers(self) -> list[RouterEntry]:
        return list(self._routers.values())

    def router(self, name: str) -> RouterEntry | None:
        """The registered router ``name``, or ``None``."""
        return self._routers.get(name)

    def names(self) -> list[str]:
        """Every controller's usage (``static:<MHz>`` for one with an argument)."""
        return [e.usage for e in self._controllers.values()]

    def help_text(self) -> str:
        """One paragraph listing every controller and router, for ``--help``."""
        ctl = "; ".join(f"{e.usage} ({e.summary})" for e in self._controllers.values())
        rt = ", ".join(f"+{e.name}" for e in self._routers.values())
        return f"{ctl}. Add {rt} to pick the decode router."

    def parse(self, name: str) -> tuple[ControllerEntry, str | None, RouterEntry]:
        """Split ``name`` into its controller entry, argument and router entry; unknown parts list the valid."""
        head, _, router_name = name.partition("+")
        base, colon, arg = head.partition(":")
        entry = self._controllers.get(base)
        if entry is None:
            raise UserError(f"unknown policy {name!r}: use one of {', '.join(self.names())}, optionally "
                            f"+{'/+'.join(self._routers)}", field="policies")
        if entry.argument is None and colon:
            raise UserError(f"policy {name!r}: {base} takes no ':' argument", field="policies")
        if entry.argument is not None and not arg and not (entry.searched and not colon):
            raise UserError(f"policy {name!r}: write it as {entry.usage}", field="policies")
        rname = router_name or entry.default_router
        router = self.router(rname)
        if router is None:
            raise UserError(f"unknown router {rname!r} in policy {name!r}: use one of {', '.join(self._routers)}",
                            field="policies")
        return entry, (arg if colon else None), router

    def entry(self, name: str) -> ControllerEntry:
        """The controller entry of policy ``name`` (an unknown name fails listing the valid ones)."""
        return self.parse(name)[0]

    def searched(self, name: str) -> bool:
        """Whether ``name`` is found by a search in the world that runs it (``static-best``, bare
        ``colocated``) rather than built from knobs."""
        entry, arg, _ = self.parse(name)
        return entry.searched and arg is None

    def predictor_clocks(self, name: str, ctx: PolicyContext) -> list[int]:
        """The clocks a predictor for policy ``name`` must cover (its router's included)."""
        entry, _, router = self.parse(name)
        clocks = set(entry.clocks(ctx) if entry.clocks else ctx.levels)
        if router.clocks is not None:
            clocks |= set(router.clocks(ctx))
        return sorted(clocks)

    def build(self, name: str, ctx: PolicyContext) -> Policy:
        """Build policy ``name`` for ``ctx``; an unknown name or an unsupported clock fails with the valid ones."""
        entry, arg, router = self.parse(name)
        pname = (entry.prefill_router(ctx) if entry.prefill_router else None) or ctx.prefill_router
        prefill = self.router(pname)
        if prefill is None:
            raise UserError(f"unknown router {pname!r}: use one of {', '.join(self._routers)}",
                            field="prefill_router")
        make_prefill, make_decode = entry.build(ctx, arg)
        return Policy(name, make_prefill, make_decode, router.build(ctx), prefill.build(ctx))


def _static(clock: int) -> tuple[ControllerFactory, ControllerFactory]:
    def make() -> FrequencyController:
        return StaticController(clock)

    return make, make


def _static_max(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    return _static(ctx.clocks_mhz[-1])


def _static_min(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    # The lowest EcoFreq level (1005 MHz on A100: the paper's low static baseline), not the GPU's floor
    # (210 MHz on A100, which no one serves at); static:<MHz> reaches any supported clock.
    return _static(ctx.check_clock(min(ctx.levels), "static-min"))


def _static_clock(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    """``static:<MHz>`` for both roles, or ``static:<prefill MHz>/<decode MHz>``."""
    try:
        clocks = [int(x) for x in (arg or "").split("/")]
        if len(clocks) not in (1, 2):
            raise ValueError
    except ValueError:
        raise UserError(f"policy 'static:{arg}': write a static clock as static:<MHz> or static:<prefill>/<decode>, "
                        f"e.g. static:{ctx.levels[0]}", field="policies") from None
    pre, dec = (ctx.check_clock(c, f"static:{arg}") for c in (clocks[0], clocks[-1]))

    def make_pre() -> FrequencyController:
        return StaticController(pre)

    def make_dec() -> FrequencyController:
        return StaticController(dec)

    return make_pre, make_dec


def _ecofreq(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    p = ctx.ecofreq
    levels = list(ctx.levels)
    for c in levels:
        ctx.check_clock(c, "EcoFreq level")
    if p.margin is not None and not -0.5 <= p.margin <= 2:
        raise UserError(f"{p.margin} is outside [-0.5, 2]; leave it out for the paper's run (decode -0.1, "
                        "prefill -0.4375)", field="ecofreq_margin")
    predictor = ctx.predictor
    prepare = getattr(predictor, "prepare", None)
    if prepare is not None:
        prepare(levels)  # a fitted predictor fails now, with its fitted range, if a level is outside it

    def make(phase: str, slo_s: float) -> ControllerFactory:
        def new() -> FrequencyController:
            margin = PAPER_RUN_MARGINS[phase] if p.margin is None else p.margin
            return EcoFreqController(phase, predictor, levels, slo_s, margin=margin, min_hold_s=p.min_hold_ms / 1e3,
                                     idle_timeout_s=p.idle_timeout_s)

        return new

    return make("prefill", ctx.slo_ttft_s), make("decode", ctx.slo_itl_s)


def _feedback(ctx: PolicyContext, tuned: TunedPolicy) -> tuple[ControllerFactory, ControllerFactory]:
    predictor, clocks = ctx.predictor, ctx.clocks_mhz
    prepare = getattr(predictor, "prepare", None)
    if prepare is not None:
        prepare(tuned.clocks(clocks))  # a fitted predictor fails now if a level is outside its range

    def make(phase: str, slo_s: float, params: FeedbackParams) -> ControllerFactory:
        def new() -> FrequencyController:
            return FeedbackController(phase, predictor, clocks, slo_s, params)

        return new

    try:
        tuned.prefill.check()
        tuned.decode.check()
    except ValueError as exc:
        raise UserError(str(exc), field="tuned") from None
    return make("prefill", ctx.slo_ttft_s, tuned.prefill), make("decode", ctx.slo_itl_s, tuned.decode)


def _feedback_default(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    return _feedback(ctx, TunedPolicy.default_for(ctx.clocks_mhz, ctx.levels))


def _tuned(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    if ctx.tuned is None:
        raise UserError("policy 'voltana-tuned' needs a tuned config: write one with `voltana tune`, then give it",
                        field="tuned")
    return _feedback(ctx, ctx.tuned)


def _oracle(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    if arg is None:
        raise UserError("the bare oracle is found by a search over its budget margin, which the bench and tune "
                        "run; give a margin to run one (oracle:0.1)", field="policies")
    try:
        margin = float(arg)
    except ValueError:
        margin = float("nan")
    if not 0.0 <= margin < 1.0:  # NaN fails it too
        raise UserError(f"policy 'oracle:{arg}': the margin is a share of the SLO in [0, 1), e.g. oracle:0.1",
                        field="policies")
    levels = ctx.feedback().clocks(ctx.clocks_mhz)

    def make(phase: str, slo_s: float) -> ControllerFactory:
        def new() -> FrequencyController:
            return OracleController(phase, levels, slo_s, margin=margin)

        return new

    return make("prefill", ctx.slo_ttft_s), make("decode", ctx.slo_itl_s)


def _searched(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    raise UserError("static-best is found by a search over static clock pairs, which the bench and tune run; "
                    "it cannot be built from knobs", field="policies")


def _colocated(ctx: PolicyContext, arg: str | None) -> tuple[ControllerFactory, ControllerFactory]:
    if arg is None:
        raise UserError("colocated is found by a search over static clocks, which the bench and tune run; give "
                        f"colocated:<MHz> for one clock, e.g. colocated:{ctx.clocks_mhz[-1]}", field="policies")
    try:
        clock = int(arg)
    except ValueError:
        raise UserError(f"policy 'colocated:{arg}': write it as colocated:<MHz>, e.g. colocated:{ctx.levels[0]}",
                        field="policies") from None
    return _static(ctx.check_clock(clock, f"colocated:{arg}"))


def _decode_levels(ctx: PolicyContext) -> list[int]:
    """The decode controllers' clocks in force (what the predictive router asks its predictor about)."""
    return ctx.feedback().decode.levels(ctx.clocks_mhz)


def _predictive(ctx: PolicyContext) -> Router:
    fb = ctx.feedback()
    return PredictiveRouter(ctx.predictor, _decode_levels(ctx), ctx.slo_itl_s, fb.router_headroom)


def _tuned_router(ctx: PolicyContext) -> Router:
    name = ctx.feedback().router
    entry = REGISTRY.router(name) if name != "tuned" else None
    if entry is None:
        raise UserError(f"the tuned config's router {name!r} is not a router: use one of "
                        f"{', '.join(e.name for e in REGISTRY.routers() if e.name != 'tuned')}", field="tuned")
    return entry.build(ctx)


REGISTRY = PolicyRegistry()
"""The one registry of policies; worlds add their own entries to it."""

for _entry in (
    ControllerEntry("static-max", "the GPU's top clock, locked", _static_max),
    ControllerEntry("static-min", "the lowest EcoFreq level, locked: the paper's low static baseline", _static_min),
    ControllerEntry("static", "one clock, locked", _static_clock, argument="MHz"),
    ControllerEntry("ecofreq", "the paper's per-iteration rule: lowest level whose predicted latency fits the SLO "
                    "with the margin; queued work forces the top level", _ecofreq, params=EcoFreqParams),
    ControllerEntry("voltana", "ecofreq with the tile-aware decode router (the paper's full system)", _ecofreq,
                    default_router="tile-aware", params=EcoFreqParams),
    ControllerEntry("feedback", "closed loop: the cheapest clock that fits a budget corrected from observed "
                    "latencies, prefill planned over its queue (untuned defaults)", _feedback_default,
                    default_router="predictive", params=FeedbackParams,
                    clocks=lambda ctx: ctx.feedback().clocks(ctx.clocks_mhz)),
    ControllerEntry("voltana-tuned", "the feedback controller and router with the knobs of a tuned config", _tuned,
                    default_router="tuned", params=TunedPolicy,
                    clocks=lambda ctx: ctx.feedback().clocks(ctx.clocks_mhz),
                    prefill_router=lambda ctx: ctx.tuned.prefill_router if ctx.tuned else None),
    ControllerEntry("static-best", "one static clock for prefill and one for decode: the pair with the least energy "
                    "that meets the rate's requirement, found by search", _searched, searched=True),
    ControllerEntry("colocated", "no P/D split: the same GPUs each serve both phases (chunked prefill mixed into "
                    "decode batches) at one static clock; bare, the clock with the least energy that meets the "
                    "rate's requirement, found by search", _colocated, argument="MHz", default_router="least-loaded",
                    searched=True, layout="colocated"),
    ControllerEntry("oracle", "yardstick: per iteration the lowest clock whose TRUE latency meets the SLO less a "
                    "margin (reads the simulator's ground truth); bare, the least margin that meets the rate's "
                    "requirement, found by search", _oracle, argument="margin", default_router="predictive",
                    yardstick=True, searched=True, clocks=lambda ctx: ctx.feedback().clocks(ctx.clocks_mhz)),
):
    REGISTRY.add_controller(_entry)
for _router in (
    RouterEntry("round-robin", "each decode instance in turn", lambda ctx: RoundRobinRouter()),
    RouterEntry("tile-aware", "the paper's EcoRoute: keep instances below batch-size boundaries",
                lambda ctx: TileAwareRouter(ctx.tile)),
    RouterEntry("least-loaded", "the instance with the fewest queued tokens", lambda ctx: LeastLoadedRouter()),
    RouterEntry("random", "a seeded uniformly random instance", lambda ctx: RandomRouter(ctx.seed)),
    RouterEntry("predictive", "what-if on each decode instance: the least marginal predicted energy that keeps "
                "the ITL SLO", _predictive, clocks=_decode_levels),
    RouterEntry("tuned", "the router a tuned config chose", _tuned_router, clocks=_decode_levels),
):
    REGISTRY.add_router(_router)


def build_policy(name: str, ctx: PolicyContext) -> Policy:
    """Build policy ``name`` from the registry (shorthand for ``REGISTRY.build``)."""
    return REGISTRY.build(name, ctx)
