import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import policy_context
from voltana_cli.core.errors import UserError
from voltana_cli.core.models import ModelPredictor, gpu_spec
from voltana_cli.core.policy import (
    REGISTRY,
    ControllerEntry,
    EcoFreqController,
    InstanceView,
    Observation,
    PolicyRegistry,
    RoundRobinRouter,
    RouterEntry,
    StaticController,
    TileAwareRouter,
    build_policy,
)


@pytest.fixture
def exact(a100_8b):
    return ModelPredictor(a100_8b, 0.0, None, [1005, 1410])


def test_default_levels_are_the_papers_pair_from_spec_data():
    assert gpu_spec("a100-80g-sxm4").ecofreq_levels_mhz == (1005, 1410)
    # Other GPUs: the A100 pair's ratio applied to their top clock, and a supported clock.
    for key in ("h100-80g-sxm", "h200-141g-sxm"):
        g = gpu_spec(key)
        assert g.ecofreq_levels_mhz[-1] == g.max_clock_mhz and set(g.ecofreq_levels_mhz) <= set(g.clocks_mhz)


def test_static_controller_is_constant():
    c = StaticController(1005)
    assert c.decide(Observation(0.0, 500, 10**6, queued=9)) == 1005
    assert c.idle_clock_mhz == 1005


def test_ecofreq_decode_low_clock_when_light_max_when_queued(exact):
    c = EcoFreqController("decode", exact, [1005, 1410], slo_s=0.05, margin=0.0, min_hold_s=0.0)
    assert c.decide(Observation(0.0, 8, 8 * 300)) == 1005
    assert c.decide(Observation(0.1, 8, 8 * 300, queued=1)) == 1410
    assert c.decide(Observation(0.2, 600, 600 * 900)) == 1410  # prediction over the SLO


def test_ecofreq_prefill_budget_shrinks_with_wait(exact):
    c = EcoFreqController("prefill", exact, [1005, 1410], slo_s=0.8, margin=0.0, min_hold_s=0.0)
    assert c.decide(Observation(0.0, 4, 2000, oldest_wait_s=0.0)) == 1005
    assert c.decide(Observation(1.0, 4, 2000, oldest_wait_s=0.75)) == 1410


def test_ecofreq_does_not_flap_but_raises_at_once(exact):
    c = EcoFreqController("decode", exact, [1005, 1410], slo_s=0.05, margin=0.0, min_hold_s=0.05)
    assert c.decide(Observation(0.0, 8, 2400, queued=1)) == 1410
    assert c.decide(Observation(0.01, 8, 2400)) == 1410  # held
    assert c.decide(Observation(0.06, 8, 2400)) == 1005  # after the hold
    assert c.decide(Observation(0.061, 8, 2400, queued=2)) == 1410


def test_ecofreq_idle_timeout_drops_to_min(exact):
    c = EcoFreqController("decode", exact, [1005, 1410], slo_s=0.05)
    c.decide(Observation(0.0, 1, 10, queued=1))
    assert c.current == 1410
    c.on_idle_timeout()
    assert c.current == 1005 == c.idle_clock_mhz


@settings(max_examples=200, deadline=None)
@given(b1=st.integers(1, 1500), extra=st.integers(0, 1500), kv=st.integers(1, 2000))
def test_ecofreq_never_lowers_clock_when_load_rises(a100_8b, b1, extra, kv):
    pred = ModelPredictor(a100_8b, 0.0, None, [855, 1005, 1200, 1410])
    mk = lambda: EcoFreqController("decode", pred, [855, 1005, 1200, 1410], 0.05, min_hold_s=0.0)  # noqa: E731
    lo = mk().decide(Observation(0.0, b1, b1 * kv))
    hi = mk().decide(Observation(0.0, b1 + extra, (b1 + extra) * kv))
    assert hi >= lo


def test_prediction_error_is_bounded_and_seeded(a100_8b):
    p1 = ModelPredictor(a100_8b, 0.1, np.random.default_rng(3), [1005])
    p2 = ModelPredictor(a100_8b, 0.1, np.random.default_rng(3), [1005])
    truth = a100_8b.decode_cost(32, 32 * 400, 1005)[0]
    assert p1.decode_s(32, 32 * 400, 1005) == p2.decode_s(32, 32 * 400, 1005)
    assert abs(p1.decode_s(32, 32 * 400, 1005) / truth - 1) <= 0.1 + 1e-9


def test_round_robin_cycles():
    r = RoundRobinRouter()
    views = [InstanceView(i, 0, 0, 1410) for i in range(3)]
    assert [r.choose(10, views) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_tile_aware_below_tile_prefers_low_clock_then_fewest():
    r = TileAwareRouter(128)
    assert r.choose(1, [InstanceView(0, 10, 0, 1410), InstanceView(1, 50, 0, 1005)]) == 1
    assert r.choose(1, [InstanceView(0, 10, 0, 1005), InstanceView(1, 50, 0, 1005)]) == 0


def test_tile_aware_avoids_opening_a_tile():
    r = TileAwareRouter(128)
    # Instance 0 sits exactly on a boundary (128): adding would open a new tile; instance 1 can absorb.
    assert r.choose(1, [InstanceView(0, 128, 0, 1410), InstanceView(1, 100, 0, 1410)]) == 1
    # Both past the boundary: fill the one with fewer tiles in use first, the fuller one among those.
    assert r.choose(1, [InstanceView(0, 300, 0, 1410), InstanceView(1, 200, 0, 1410)]) == 1


def test_policy_registry_names_and_errors(a100_8b):
    ctx = policy_context(a100_8b)
    assert isinstance(build_policy("voltana", ctx).decode_router, TileAwareRouter)
    assert isinstance(build_policy("ecofreq", ctx).decode_router, RoundRobinRouter)
    assert isinstance(build_policy("static-max+tile-aware", ctx).decode_router, TileAwareRouter)
    assert build_policy("static-max", ctx).make_decode_controller().decide(Observation(0, 1, 1)) == 1410
    assert build_policy("static-min", ctx).make_decode_controller().decide(Observation(0, 1, 1)) == 1005
    assert build_policy("static:705", ctx).make_prefill_controller().decide(Observation(0, 1, 1)) == 705
    for bad, msg in [("nope", "unknown policy"), ("static:1000", "1000 MHz"), ("static:x", "static:<MHz>"),
                     ("voltana+nope", "unknown router")]:
        with pytest.raises(UserError, match=msg):
            build_policy(bad, ctx)


def test_every_registered_name_builds_and_help_lists_it(a100_8b):
    from dataclasses import replace

    from voltana_cli.core.policy.feedback import TunedPolicy

    pm = a100_8b
    tuned = TunedPolicy.default_for(tuple(pm.clocks), pm.gpu.ecofreq_levels_mhz)
    ctx = replace(policy_context(pm), tuned=tuned,
                  predictor=ModelPredictor(pm, 0.05, np.random.default_rng(0), list(pm.clocks)))
    help_text = REGISTRY.help_text()
    obs = Observation(0.0, 1, 64, truth_s=lambda c: 0.1 * 1410 / c)  # the oracle reads a truth
    for entry in REGISTRY.controllers():
        # A searched entry with an argument (colocated[:<MHz>], oracle[:<margin>]) is built with it and searched
        # without it.
        example = {"MHz": "1200", "margin": "0.1"}.get(entry.argument or "", "")
        names = [entry.name, f"{entry.name}:{example}"] if entry.searched and entry.argument else \
            [entry.usage.replace(f"<{entry.argument}>", example)]
        assert entry.usage in help_text
        for name in names:
            for router in REGISTRY.routers():
                if REGISTRY.searched(name):  # found by search in the world that runs it, never built from knobs
                    with pytest.raises(UserError, match="found by a search"):
                        build_policy(f"{name}+{router.name}", ctx)
                    continue
                pol = build_policy(f"{name}+{router.name}", ctx)
                assert pol.make_prefill_controller().decide(obs) in pm.clocks
                assert f"+{router.name}" in help_text


def test_an_unknown_name_lists_the_valid_ones_and_says_which_field(a100_8b):
    with pytest.raises(UserError) as err:
        build_policy("ecofrek", policy_context(a100_8b))
    assert err.value.field == "policies"
    assert all(n in str(err.value) for n in REGISTRY.names())


def test_registering_a_name_twice_is_an_error():
    reg = PolicyRegistry()
    entry = ControllerEntry("x", "test", lambda ctx, arg: (lambda: StaticController(1), lambda: StaticController(1)))
    reg.add_controller(entry)
    with pytest.raises(ValueError, match="already registered"):
        reg.add_controller(entry)
    reg.add_router(RouterEntry("r", "test", lambda ctx: RoundRobinRouter()))
    with pytest.raises(ValueError, match="already registered"):
        reg.add_router(RouterEntry("r", "test", lambda ctx: RoundRobinRouter()))


def test_a_layer_can_register_its_own_policy_without_touching_the_core(a100_8b):
    reg = PolicyRegistry()
    reg.add_router(RouterEntry("round-robin", "test", lambda ctx: RoundRobinRouter()))
    reg.add_controller(ControllerEntry("half", "half the top clock", lambda ctx, arg: (
        lambda: StaticController(ctx.clocks_mhz[len(ctx.clocks_mhz) // 2]),) * 2))
    from dataclasses import replace

    pol = reg.build("half", replace(policy_context(a100_8b), prefill_router="round-robin"))
    assert pol.make_decode_controller().decide(Observation(0, 1, 1)) == a100_8b.clocks[len(a100_8b.clocks) // 2]
    assert "half" not in REGISTRY.names()


def test_random_router_is_seeded_uniform_and_pure():
    from voltana_cli.core.policy import RandomRouter

    views = [InstanceView(i, 0, 0, 1410) for i in range(3)]
    a = [RandomRouter(7).choose(1, views) for _ in range(1)]
    r1, r2, r3 = RandomRouter(7), RandomRouter(7), RandomRouter(8)
    seq1 = [r1.choose(1, views) for _ in range(3000)]
    assert seq1 == [r2.choose(1, views) for _ in range(3000)] and a[0] == seq1[0]
    assert seq1 != [r3.choose(1, views) for _ in range(3000)]
    counts = [seq1.count(i) for i in range(3)]
    assert all(900 < c < 1100 for c in counts), counts


def test_random_router_draws_are_splitmix64_step_by_step():
    """The router draws its numbers a block at a time; they are splitmix64's, across block boundaries."""
    from voltana_cli.core.policy import RandomRouter

    def reference(seed: int, n: int, k: int) -> list[int]:
        state, out = seed % 2**64, []
        for _ in range(n):
            state = (state + 0x9E3779B97F4A7C15) % 2**64
            z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
            out.append((z ^ (z >> 31)) % k)
        return out

    for seed in (0, 7, 2**64 - 1):
        for k in (2, 3, 1000):
            views = [InstanceView(i, 0, 0, 1410) for i in range(k)]
            router = RandomRouter(seed)
            assert [router.choose(1, views) for _ in range(9000)] == reference(seed, 9000, k)


def test_the_prefill_router_comes_from_the_registry(a100_8b):
    from dataclasses import replace

    from voltana_cli.core.policy import LeastLoadedRouter, RandomRouter

    ctx = policy_context(a100_8b)
    assert isinstance(build_policy("voltana", ctx).prefill_router, RandomRouter)
    assert isinstance(build_policy("voltana", replace(ctx, prefill_router="least-loaded")).prefill_router,
                      LeastLoadedRouter)
    with pytest.raises(UserError) as err:
        build_policy("voltana", replace(ctx, prefill_router="nope"))
    assert err.value.field == "prefill_router"


def test_ecofreq_targets_default_to_the_paper_run_scripts_and_a_margin_sets_both(a100_8b):
    """Without a margin, EcoFreq aims where the paper's run scripts set it: 450 ms for prefill and 45 ms for
    decode of an 800 ms / 50 ms SLO (0.5625 and 0.9 of each); a given margin applies to both phases."""
    from tests.conftest import policy_context
    from voltana_cli.core.policy import EcoFreqParams, build_policy

    pol = build_policy("voltana", policy_context(a100_8b))
    assert pol.make_prefill_controller().target_s == pytest.approx(0.45)
    assert pol.make_decode_controller().target_s == pytest.approx(0.045)
    loose = build_policy("voltana", policy_context(a100_8b, ecofreq=EcoFreqParams(margin=0.35)))
    assert loose.make_prefill_controller().target_s == pytest.approx(0.8 * 1.35)
    assert loose.make_decode_controller().target_s == pytest.approx(0.05 * 1.35)
