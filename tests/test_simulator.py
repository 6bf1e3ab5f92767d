import math

import numpy as np
import pytest

from tests.conftest import make_policy, make_workload
from voltana_cli.core.errors import UserError
from voltana_cli.core.metrics import summarize
from voltana_cli.core.sim import ClusterConfig, simulate


def run(pm, wl, policy="voltana", seed=0, **cluster):
    return simulate(wl, pm, make_policy(pm, policy, seed), ClusterConfig(**cluster), np.random.default_rng(seed))


@pytest.mark.parametrize("policy", ["static-max", "static-min", "ecofreq", "voltana"])
def test_every_request_finishes_exactly_once_and_in_order(a100_8b, policy):
    wl = make_workload(n=400, rate=30.0)
    res = run(a100_8b, wl, policy)
    assert np.all(np.isfinite(res.finish_s)) and np.all(np.isfinite(res.ttft_s))
    assert np.all(res.ttft_s > 0)
    assert np.all(res.finish_s >= res.arrival_s + res.ttft_s - 1e-12)
    # Each request joined exactly one decode instance and got output_tokens - 1 decode iterations.
    assert set(np.unique(res.decode_instance)) <= {0, 1}
    assert res.token_gaps[1].sum() == (res.output_tokens - 1).sum()
    assert np.array_equal(res.gap_count, res.output_tokens - 1)
    one = res.output_tokens == 1
    assert np.all(np.isnan(res.itl_mean_s[one])) and np.all(np.isfinite(res.itl_mean_s[~one]))


def test_energy_is_non_negative_and_adds_up(a100_8b):
    res = run(a100_8b, make_workload(n=300, rate=20.0))
    s = summarize(res, 0.8, 0.05)
    e = s.energy_j
    assert all(v >= 0 for v in e.values())
    assert e["total"] == pytest.approx(e["prefill"] + e["decode"] + e["idle"])
    # Every instance is accounted for over the whole window: busy + idle time = run length.
    for st in res.instances:
        assert st.busy_s + st.idle_s == pytest.approx(res.end_s - res.start_s, rel=1e-6)


def test_same_seed_same_result_different_seed_differs(a100_8b):
    wl = make_workload(n=300, rate=40.0)
    a, b = run(a100_8b, wl, seed=1), run(a100_8b, wl, seed=1)
    c = run(a100_8b, wl, seed=2)
    assert np.array_equal(a.finish_s, b.finish_s) and np.array_equal(a.ttft_s, b.ttft_s)
    assert sum(s.energy_j for s in a.instances) == sum(s.energy_j for s in b.instances)
    assert not np.array_equal(a.finish_s, c.finish_s)


def test_trivially_low_rate_meets_every_slo(a100_8b):
    res = run(a100_8b, make_workload(n=100, rate=0.5))
    s = summarize(res, 0.8, 0.05)
    assert s.attainment == {"ttft": 1.0, "itl": 1.0, "both": 1.0}


def test_low_clock_saves_energy_at_light_load_and_costs_latency(a100_8b):
    wl = make_workload(n=600, rate=20.0)
    hi = summarize(run(a100_8b, wl, "static-max"), 0.8, 0.05)
    lo = summarize(run(a100_8b, wl, "static-min"), 0.8, 0.05)
    assert lo.energy_j["total"] < 0.85 * hi.energy_j["total"]
    assert lo.ttft_ms["p50"] > hi.ttft_ms["p50"]


def test_clock_switches_counted_and_cost_time(a100_8b):
    wl = make_workload(n=600, rate=150.0)
    res = run(a100_8b, wl, "voltana", record_timeline=True)
    switches = sum(s.clock_switches for s in res.instances)
    assert switches > 0
    for st in res.instances:
        times = [t for t, _ in st.timeline]
        assert times == sorted(times)
        assert st.timeline[0][1] == 1005  # EcoFreq starts at its lowest clock
    free = run(a100_8b, wl, "voltana", switch_ms=0.0)
    assert sum(s.busy_s for s in free.instances) != pytest.approx(sum(s.busy_s for s in res.instances), rel=1e-9)


def test_overload_queues_and_misses_slo(a100_8b):
    res = run(a100_8b, make_workload(n=1500, rate=400.0, out_max=300), "static-max")
    s = summarize(res, 0.8, 0.05)
    assert s.attainment["ttft"] < 0.5
    assert math.isfinite(s.energy_j["total"])


def test_a_request_larger_than_the_kv_cache_is_refused_before_running(a100_8b):
    wl = make_workload(n=50, rate=5.0)
    object.__setattr__(wl, "input_tokens", np.full(50, 500_000))
    with pytest.raises(UserError, match="KV tokens") as err:
        run(a100_8b, wl)
    assert err.value.field == "workload"


def test_an_empty_workload_is_refused(a100_8b):
    wl = make_workload(n=1)
    for name in ("arrival_s", "input_tokens", "output_tokens"):
        object.__setattr__(wl, name, getattr(wl, name)[:0])
    with pytest.raises(UserError, match="no requests"):
        run(a100_8b, wl)


def test_timelines_start_at_the_idle_clock_and_follow_every_switch(a100_8b):
    res = run(a100_8b, make_workload(n=400, rate=60.0), "voltana", record_timeline=True)
    for rec in res.instances:
        assert len(rec.timeline) == rec.clock_switches + 1
        assert set(rec.clock_busy_s) <= {c for _, c in rec.timeline}


def test_both_instances_are_chosen_at_arrival_and_the_decode_counts_the_request_from_then(a100_8b):
    """As SGLang's P/D routers do: the decode router sees requests still in prefill as routed to an instance."""
    from dataclasses import replace

    from tests.conftest import policy_context
    from voltana_cli.core.policy import build_policy

    seen: list[int] = []

    class Spy:
        def choose(self, input_tokens, views):
            seen.append(sum(v.num_requests for v in views))
            return views[0].index

    wl = make_workload(n=3, rate=1e6)  # three requests at (almost) the same instant
    pol = build_policy("static-max", replace(policy_context(a100_8b), prefill_router="round-robin"))
    pol.decode_router = Spy()
    res = simulate(wl, a100_8b, pol, ClusterConfig(), np.random.default_rng(0))
    assert seen == [0, 1, 2]  # each arrival sees the earlier ones, though none has finished its prefill
    assert list(res.prefill_instance) == [0, 1, 0] and set(res.decode_instance) == {0}


def test_decode_memory_pressure_backs_up_into_prefill(a100_8b):
    """A decode instance with little free KV pre-allocates few requests at a time: their prefills wait, so
    TTFT grows, and every request still finishes exactly once."""
    from tests.test_instance import SmallKv

    wl = make_workload(n=120, rate=200.0, out_max=40)
    roomy = run(a100_8b, wl, "static-max")
    tight = run(SmallKv(a100_8b, kv_capacity_tokens=4000, max_batch=a100_8b.max_batch), wl, "static-max")
    assert np.all(np.isfinite(tight.finish_s)) and np.array_equal(tight.gap_count, roomy.gap_count)
    assert np.nanmean(tight.ttft_s) > 2 * np.nanmean(roomy.ttft_s)


def test_a_blocked_preallocation_resumes_when_the_last_running_request_finishes(a100_8b):
    """No arrival comes after the burst: the decode instance must pre-allocate the blocked head itself."""
    from tests.test_instance import SmallKv

    wl = make_workload(n=30, rate=1e4, out_max=60)
    object.__setattr__(wl, "input_tokens", np.full(30, 1300))  # one running request blocks the next
    res = run(SmallKv(a100_8b, kv_capacity_tokens=3000, max_batch=a100_8b.max_batch), wl, "static-max")
    assert np.all(np.isfinite(res.finish_s))


def test_recording_a_timeline_changes_nothing_and_traces_every_iteration(a100_8b):
    """What a timeline plot shows is the run itself: recording leaves it bit for bit the same."""
    wl = make_workload(n=300, rate=40.0)
    plain = run(a100_8b, wl, "voltana", seed=3)
    rec = run(a100_8b, wl, "voltana", seed=3, record_timeline=True)
    assert np.array_equal(plain.finish_s, rec.finish_s) and np.array_equal(plain.ttft_s, rec.ttft_s)
    for a, b in zip(plain.instances, rec.instances, strict=True):
        assert a.energy_j == b.energy_j and not a.trace
        assert len(b.trace) == b.iterations
        starts = [t for t, *_ in b.trace]
        assert starts == sorted(starts)
        # Every iteration's clock appears in the clock timeline (each switch is recorded there).
        held = {c for _, c in b.timeline}
        assert {clock for *_, clock in b.trace} <= held
        if b.role == "decode":  # every running request gets one token per iteration: the ITLs it delivered
            mine = rec.decode_instance == b.index
            assert sum(batch for _, batch, _, _ in b.trace) == int((rec.output_tokens[mine] - 1).sum())


def _engine(pm, **fields):
    """``pm``'s GPU and model served by an engine whose spec differs in ``fields``."""
    from voltana_cli.core.models import PerfModel

    return PerfModel(pm.gpu, pm.model, pm.engine.model_copy(update=fields), tp=pm.tp)


def test_after_prefill_handoff_never_holds_a_prefill_for_decode_memory(a100_8b):
    """The paper's testbed (fake KV transfer, the router posting the decode once the prefill answered): the
    prefill instances run exactly the same iterations whatever the decode's KV room, and each first token
    comes at least the handoff's latency after its arrival; every request still finishes once."""
    from tests.test_instance import SmallKv

    testbed = _engine(a100_8b, pd_handoff="after_prefill", kv_transfer_latency_ms=5.0)
    wl = make_workload(n=120, rate=200.0, out_max=40)
    roomy = run(testbed, wl, "static-max", noise=0.0)
    tight = run(SmallKv(testbed, kv_capacity_tokens=4000, max_batch=testbed.max_batch), wl, "static-max", noise=0.0)
    for a, b in zip(roomy.instances, tight.instances, strict=True):
        if a.role == "prefill":
            assert (a.iterations, a.busy_s, a.busy_energy_j) == (b.iterations, b.busy_s, b.busy_energy_j)
    assert np.all(np.isfinite(tight.finish_s)) and np.array_equal(tight.gap_count, roomy.gap_count)
    assert np.nanmean(tight.ttft_s) > np.nanmean(roomy.ttft_s)  # the decode's memory now delays the decode side only
    assert np.all(tight.ttft_s >= 5e-3) and np.all(roomy.ttft_s >= 5e-3)
    # Bootstrap (a real transfer backend): the same tight decode holds the prefills back.
    gated = run(SmallKv(a100_8b, kv_capacity_tokens=4000, max_batch=a100_8b.max_batch), wl, "static-max", noise=0.0)
    base = run(a100_8b, wl, "static-max", noise=0.0)
    assert [x.busy_s for x in gated.instances if x.role == "prefill"] != \
        [x.busy_s for x in base.instances if x.role == "prefill"]


def test_the_request_paths_ingress_and_egress_shift_every_token_and_change_nothing_on_the_gpus(a100_8b):
    """Ingress and egress are the same for every request: the client sees every token that much later, and the
    instances run exactly the same iterations (same energy, same ITLs)."""
    wl = make_workload(n=200, rate=40.0)
    bare = run(_engine(a100_8b, request_ingress_ms=0.0, token_egress_ms=0.0, bootstrap_latency_ms=0.0), wl, seed=3)
    path = run(_engine(a100_8b, request_ingress_ms=2.5, token_egress_ms=1.5, bootstrap_latency_ms=0.0), wl, seed=3)
    assert np.allclose(path.ttft_s - bare.ttft_s, 4e-3, rtol=0, atol=1e-12)
    assert np.allclose(path.finish_s - bare.finish_s, 4e-3, rtol=0, atol=1e-12)
    assert [(x.iterations, x.busy_energy_j) for x in path.instances] == \
        [(x.iterations, x.busy_energy_j) for x in bare.instances]
    assert all(np.array_equal(a, b) for a, b in zip(path.streams, bare.streams, strict=True))


def test_a_thin_margin_admits_more_and_retracts_under_kv_pressure(a100_8b):
    """Long outputs outgrow a small decode pool. With SGLang's default margin (512 tokens per active request)
    pre-allocation holds new requests back and nothing is retracted; with the testbed's (8) the decode admits
    more, then retracts running requests as their outputs grow: first tokens come sooner, running requests
    stall. Every token arrives once either way, and a pause is one ITL of the request it stalled."""
    from tests.test_instance import SmallKv

    wl = make_workload(n=80, rate=100.0, out_max=400)
    runs = {m: run(SmallKv(_engine(a100_8b, decode_reserved_tokens=m), kv_capacity_tokens=12_000,
                           max_batch=a100_8b.max_batch), wl, "static-max", noise=0.0) for m in (8, 512)}
    thin, wide = runs[8], runs[512]
    assert len(wide.pauses) == 0 and len(thin.pauses) > 0
    assert np.nanmean(thin.ttft_s) < np.nanmean(wide.ttft_s)
    assert np.nanmax(thin.itl_max_s) > np.nanmax(wide.itl_max_s)
    for res in runs.values():
        assert np.all(np.isfinite(res.finish_s)) and np.array_equal(res.gap_count, res.output_tokens - 1)
        assert res.token_gaps[1].sum() == res.gap_count.sum()
        has = res.gap_count > 0  # the mean ITL spans first to last token, pauses included
        np.testing.assert_allclose(res.itl_mean_s[has] * res.gap_count[has],
                                   (res.finish_s - res.first_token_s)[has], rtol=1e-9)


def test_the_handshake_latency_holds_a_prefill_until_its_decode_allocation_is_known(a100_8b):
    """A request on an idle cluster: its decode pre-allocates at once, its prefill may start only the
    handshake's latency later, so its first token comes exactly that much later."""
    wl = make_workload(n=1, rate=1.0)
    times = {}
    for ms in (0.0, 7.0):
        pm = _engine(a100_8b, request_ingress_ms=0.0, token_egress_ms=0.0, bootstrap_latency_ms=ms)
        times[ms] = run(pm, wl, "static-max", noise=0.0).ttft_s[0]
    assert times[7.0] - times[0.0] == pytest.approx(7e-3, abs=1e-12)


def test_decode_max_running_requests_caps_the_decode_batch(a100_8b):
    capped = _engine(a100_8b, decode_max_running_requests=4)
    res = run(capped, make_workload(n=200, rate=400.0, out_max=50), "static-max")
    assert np.all(np.isfinite(res.finish_s))
    assert max(int(w.max()) for w in res.stream_weights) == 4  # reached, never passed
    free = run(a100_8b, make_workload(n=200, rate=400.0, out_max=50), "static-max")
    assert max(int(w.max()) for w in free.stream_weights) > 4


def test_the_testbed_engine_differs_from_stock_sglang_only_in_the_run_scripts_flags():
    """``sglang-voltanallm-testbed`` is stock SGLang with the paper's server flags; anything else that differs
    would be a knob fitted to the paper's figure."""
    from voltana_cli.core.models.specs import engine_spec

    stock, testbed = engine_spec("sglang").model_dump(), engine_spec("sglang-voltanallm-testbed").model_dump()
    differ = {k for k in stock if stock[k] != testbed[k]}
    assert differ == {"name", "cuda_graph_max_bs", "chunked_prefill_tokens", "prefill_overlap_schedule",
                      "decode_reserved_tokens", "mem_fraction_static", "pd_handoff", "decode_max_running_requests"}
    assert testbed["pd_handoff"] == "after_prefill" and stock["pd_handoff"] == "bootstrap"


def test_every_shipped_model_has_default_slos_with_a_source_and_bench_uses_them():
    from voltana_cli.core.bench import BenchConfig, prepare_bench
    from voltana_cli.core.models.specs import _available, model_spec

    for name in _available("models"):
        slo = model_spec(name).slo
        assert slo.ttft_ms > 0 and slo.itl_ms > 0 and len(slo.source) > 20
    prep = prepare_bench(BenchConfig(model="qwen3-32b", request_rates=[5.0], duration_s=5.0))
    assert (prep.cfg.slo_ttft_ms, prep.cfg.slo_itl_ms) == (400.0, 100.0)
    assert prep.scenario.slo_ttft_s == 0.4 and prep.scenario.slo_itl_s == 0.1
    given = prepare_bench(BenchConfig(model="qwen3-32b", request_rates=[5.0], duration_s=5.0, slo_ttft_ms=900.0))
    assert (given.cfg.slo_ttft_ms, given.cfg.slo_itl_ms) == (900.0, 100.0)
    assert prepare_bench(BenchConfig(request_rates=[5.0], duration_s=5.0)).cfg.slo_ttft_ms == 800.0


def test_the_arrival_rate_controllers_read_does_not_start_low(a100_8b):
    """``Observation.rate_rps`` is the arrival rate smoothed over RATE_TAU_S and corrected for the weight the
    smoothing has filled since the world's start: in a run's first seconds it reads the rate, not a sum still
    rising from 0 (uncorrected it would read 63 % of the rate after 1 s and 86 % after 2 s)."""
    from dataclasses import replace

    from tests.conftest import policy_context
    from voltana_cli.core.policy import StaticController, build_policy

    readings: list[tuple[float, float]] = []

    class Recorder(StaticController):
        def decide(self, obs):
            readings.append((obs.now_s, obs.rate_rps))
            return super().decide(obs)

    wl = make_workload(n=2000, rate=40.0)  # 20 req/s per prefill instance
    pol = build_policy("static-max", replace(policy_context(a100_8b), prefill_router="round-robin"))
    top = a100_8b.clocks[-1]
    pol.make_prefill_controller = lambda: Recorder(top)
    simulate(wl, a100_8b, pol, ClusterConfig(), np.random.default_rng(0))
    early = [r for t, r in readings if 0.5 <= t <= 2.0]
    late = [r for t, r in readings if 10.0 <= t <= 40.0]
    assert len(early) > 20 and len(late) > 100
    assert np.mean(early) == pytest.approx(20.0, rel=0.15)
    assert np.mean(late) == pytest.approx(20.0, rel=0.1)
