"""The feedback controller, the predictive router and the oracle, as pure objects on hand-built states."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voltana_cli.core.policy import InstanceView, Observation
from voltana_cli.core.policy.feedback import FeedbackController, FeedbackParams
from voltana_cli.core.policy.oracle import OracleController
from voltana_cli.core.policy.predictive import PredictiveRouter

CLOCKS = tuple(range(1005, 1411, 15))


class Linear:
    """Latency ∝ work / clock; energy ∝ work × (static + clock²), so the least energy is not at the lowest
    clock. ``scale`` biases every prediction (a predictor that is wrong by a constant factor)."""

    has_energy = True

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def decode_s(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        return self.scale * (0.004 + 0.0001 * batch + 2e-8 * kv_tokens) * 1410 / clock_mhz

    def prefill_s(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        return self.scale * (0.01 + 0.00007 * tokens + 0.001 * num_seqs) * 1410 / clock_mhz

    def _j(self, t: float, clock: int) -> float:
        return t * (120 + 1.2e-4 * clock ** 2)

    def decode_j(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        return self._j(self.decode_s(batch, kv_tokens, clock_mhz), clock_mhz)

    def prefill_j(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        return self._j(self.prefill_s(tokens, num_seqs, clock_mhz), clock_mhz)


class LatencyOnly(Linear):
    has_energy = False


def decode_obs(now: float, batch: int, kv: int, last: float = 0.0, clock: int = 0) -> Observation:
    return Observation(now, batch, kv, last_latency_s=last, last_clock_mhz=clock, last_batch_size=batch,
                       last_num_tokens=kv)


def run_decode(ctl: FeedbackController, truth: Linear, batch: int, kv: int, n: int = 400) -> list[int]:
    """Drive a decode controller at constant load against a 'true' GPU; returns the clocks chosen."""
    now, last, clock, seen = 0.0, 0.0, 0, []
    for _ in range(n):
        clock = ctl.decide(decode_obs(now, batch, kv, last, clock))
        last = truth.decode_s(batch, kv, clock)
        now += last
        seen.append(clock)
    return seen


@pytest.mark.parametrize("bias", [0.8, 1.25])
def test_a_biased_predictor_is_corrected_from_measurements(bias):
    """The predictor is off by a constant factor; after the loop settles, observed latency sits at the target
    (within the gap between two clocks) instead of bias x target."""
    truth = Linear()
    ctl = FeedbackController("decode", LatencyOnly(bias), CLOCKS, 0.05, FeedbackParams(headroom=0.1, ki=0.0, kp=0.0))
    clocks = run_decode(ctl, truth, 300, 300 * 800)
    assert ctl.bias == pytest.approx(1 / bias, rel=0.02)
    settled = [truth.decode_s(300, 300 * 800, c) for c in clocks[-100:]]
    assert max(settled) <= 0.045 * 1.001  # never above the target once corrected
    assert min(settled) >= 0.045 * (1410 - 45) / 1410 * 0.97  # and no more than a couple of clock steps below


def test_error_sign_moves_the_budget():
    """Observed latencies below the target raise the budget (lower clocks); above it, lower the budget."""
    p = FeedbackParams(headroom=0.1, kp=0.5, ki=0.1)
    fast = FeedbackController("decode", LatencyOnly(), CLOCKS, 0.05, p)
    slow = FeedbackController("decode", LatencyOnly(), CLOCKS, 0.05, p)
    for i in range(50):
        fast.decide(decode_obs(i * 0.02, 8, 8000, last=0.02, clock=1410))
        slow.decide(decode_obs(i * 0.06, 8, 8000, last=0.06, clock=1410))
    assert fast.correction > 0 > slow.correction
    assert fast.integral > 0 > slow.integral


def test_anti_windup_bounds_the_integral_and_the_correction():
    p = FeedbackParams(kp=1.0, ki=1.0, integral_limit=0.7, max_correction=0.4)
    ctl = FeedbackController("decode", LatencyOnly(), CLOCKS, 0.05, p)
    for i in range(5000):  # a long overload
        ctl.decide(decode_obs(i * 0.5, 512, 512 * 4000, last=0.5, clock=1410))
    assert ctl.integral == -0.7 and ctl.correction == -0.4
    # Recovery is as quick as the bound allows: the integral does not carry 5000 iterations of error.
    for i in range(30):
        ctl.decide(decode_obs(3000 + i * 0.005, 8, 800, last=0.005, clock=1410))
    assert ctl.correction > 0


def test_no_flapping_under_constant_load():
    truth = Linear()
    for params in (FeedbackParams(), FeedbackParams(kp=1.0, ki=0.3, hysteresis=0.0, dwell_s=0.0)):
        ctl = FeedbackController("decode", Linear(), CLOCKS, 0.05, params)
        clocks = run_decode(ctl, truth, 300, 300 * 800, n=2000)[-1000:]
        changes = sum(a != b for a, b in zip(clocks, clocks[1:], strict=False))
        # A limit cycle between two neighbouring clocks is how a discrete actuator holds a mean; it must be
        # slow (at most one change per 10 iterations) and between neighbours only.
        assert changes <= 100, changes
        assert max(clocks) - min(clocks) <= 2 * (CLOCKS[1] - CLOCKS[0])


@settings(max_examples=80, deadline=None)
@given(batch=st.integers(1, 600), kv=st.integers(0, 400_000), more=st.integers(1, 200), extra_kv=st.integers(0, 50_000),
       energy=st.booleans())
def test_the_clock_never_falls_when_decode_load_rises(batch, kv, more, extra_kv, energy):
    pred = Linear() if energy else LatencyOnly()
    a = FeedbackController("decode", pred, CLOCKS, 0.05)
    b = FeedbackController("decode", pred, CLOCKS, 0.05)
    low = a.decide(decode_obs(0.0, batch, kv))
    high = b.decide(decode_obs(0.0, batch + more, kv + extra_kv))
    assert high >= low


@settings(max_examples=80, deadline=None)
@given(tokens=st.integers(1, 8192), wait=st.floats(0, 0.7), queued=st.integers(0, 30_000), more_wait=st.floats(0, 0.3))
def test_the_prefill_clock_never_falls_when_waiting_or_queued_work_grows(tokens, wait, queued, more_wait):
    ctl = [FeedbackController("prefill", LatencyOnly(), CLOCKS, 0.8) for _ in range(3)]
    base = Observation(0.0, 1, tokens, queued=3, oldest_wait_s=wait, queued_tokens=queued, queued_oldest_wait_s=wait)
    c0 = ctl[0].decide(base)
    c1 = ctl[1].decide(Observation(0.0, 1, tokens, queued=3, oldest_wait_s=wait + more_wait, queued_tokens=queued,
                                   queued_oldest_wait_s=wait + more_wait))
    c2 = ctl[2].decide(Observation(0.0, 1, tokens, queued=4, oldest_wait_s=wait, queued_tokens=queued + 2048,
                                   queued_oldest_wait_s=wait))
    assert c1 >= c0 and c2 >= c0


def test_prefill_plans_over_its_queue():
    """A small batch alone fits the lowest clock; with a long queue behind it, the clock rises just enough
    for the queue to drain in time, and an empty queue leaves it low."""
    alone = FeedbackController("prefill", LatencyOnly(), CLOCKS, 0.8).decide(Observation(0.0, 1, 512))
    busy = FeedbackController("prefill", LatencyOnly(), CLOCKS, 0.8).decide(
        Observation(0.0, 1, 512, queued=6, queued_tokens=7000, queued_oldest_wait_s=0.1))
    assert alone == CLOCKS[0] and CLOCKS[0] < busy <= CLOCKS[-1]
    pred = LatencyOnly()
    assert (pred.prefill_s(512, 1, busy) + pred.prefill_s(7000, 6, busy)) * 1.0 <= 0.8 * 0.9 - 0.1


def test_prefill_takes_the_least_energy_and_decode_the_least_power():
    """With static power dominating, a prefill iteration (fixed work: its tokens) costs least at the top clock,
    so the prefill takes it although a lower one fits. A decode instance runs iterations back to back while it
    has requests, so it pays power over time, not a count of iterations' energy: it takes the lowest fitting
    clock, although one iteration's energy is least at the top clock there too."""
    class Static(Linear):
        def _j(self, t, clock):
            return t * (400 + 1e-5 * clock ** 2)  # static power dominates: finishing faster is cheaper

    pred = Static()
    assert pred.decode_j(8, 8000, CLOCKS[-1]) < pred.decode_j(8, 8000, CLOCKS[0])
    got = FeedbackController("prefill", pred, CLOCKS, 0.8).decide(Observation(0.0, 1, 512))
    assert got == CLOCKS[-1]
    got = FeedbackController("prefill", Linear(), CLOCKS, 0.8).decide(Observation(0.0, 1, 512))
    assert got < CLOCKS[-1]
    got = FeedbackController("decode", pred, CLOCKS, 0.05).decide(decode_obs(0.0, 8, 8000))
    assert got == CLOCKS[0]
    # the budget still decides: a batch the lowest clock cannot serve in time takes the lowest clock that can
    tight = FeedbackController("decode", pred, CLOCKS, 0.0075).decide(decode_obs(0.0, 8, 8000))
    assert CLOCKS[0] < tight < CLOCKS[-1]
    assert pred.decode_s(8, 8000, tight) <= 0.0075 * 0.9 < pred.decode_s(8, 8000, tight - 15)


class Peaked(Linear):
    """Energy least near 1350 MHz: E = t * (218.7 + 1.2e-4 c^2), t proportional to 1 / c."""

    def _j(self, t, clock):
        return t * (218.7 + 1.2e-4 * clock ** 2)


def test_prefill_prices_energy_above_idle_when_the_predictor_knows_idle_power():
    """Time a prefill iteration saves is spent idle, at idle power: the price is E(c) - P_idle * t(c). Here the
    least energy is near 1350 MHz; less 80 W of idle, near 1075 MHz."""
    class WithIdle(Peaked):
        def idle_w(self, clock_mhz):
            return 80.0

    plain = FeedbackController("prefill", Peaked(), CLOCKS, 0.8).decide(Observation(0.0, 1, 512))
    idle = FeedbackController("prefill", WithIdle(), CLOCKS, 0.8).decide(Observation(0.0, 1, 512))
    assert abs(plain - 1350) <= 15 and abs(idle - 1075) <= 15


def test_a_tie_tolerance_takes_the_lowest_clock_within_it_of_the_cheapest():
    pred = Peaked()
    obs = Observation(0.0, 1, 512)
    cheapest = FeedbackController("prefill", pred, CLOCKS, 0.8).decide(obs)
    got = FeedbackController("prefill", pred, CLOCKS, 0.8, FeedbackParams(tie_tolerance=0.02)).decide(obs)
    e = {c: pred.prefill_j(512, 1, c) for c in CLOCKS}
    assert CLOCKS[0] < got < cheapest and e[got] <= 1.02 * e[cheapest] < e[CLOCKS[CLOCKS.index(got) - 1]]
    # the budget still decides: a tolerance never takes a clock that does not fit
    tight = FeedbackController("prefill", pred, CLOCKS, 0.06, FeedbackParams(tie_tolerance=0.5)).decide(obs)
    assert pred.prefill_s(512, 1, tight) <= 0.06 * 0.9 < pred.prefill_s(512, 1, tight - 15)


def test_levels_floor_step_and_top():
    p = FeedbackParams(floor_mhz=1100, step=7)
    assert p.levels(CLOCKS) == [1110, 1215, 1320, 1410]
    assert FeedbackParams(floor_mhz=5000).levels(CLOCKS) == [1410]
    with pytest.raises(ValueError, match="headroom"):
        FeedbackParams(headroom=1.5).check()
    with pytest.raises(ValueError, match="kp"):
        FeedbackParams(kp=float("nan")).check()


# --- the predictive router's what-if ------------------------------------------------------------------
def view(i: int, n: int, kv: int) -> InstanceView:
    return InstanceView(i, n, kv, 1005, kv)


def test_router_packs_onto_a_running_instance_while_the_budget_holds():
    r = PredictiveRouter(Linear(), CLOCKS, 0.05)
    assert r.choose(500, [view(0, 0, 0), view(1, 20, 20_000)]) == 1  # an empty instance costs a whole iteration


def test_router_spreads_when_one_more_request_would_break_the_budget():
    r = PredictiveRouter(Linear(), CLOCKS, 0.05)
    pred = Linear()
    full = 341  # the batch at which the top clock still just keeps the budget
    assert pred.decode_s(full, full * 1000, 1410) <= 0.045 < pred.decode_s(full + 1, (full + 1) * 1000 + 500, 1410)
    assert r.choose(500, [view(0, full, full * 1000), view(1, 40, 40_000)]) == 1


def test_router_avoids_a_step_in_the_predictor():
    class Step(Linear):
        def decode_s(self, batch, kv, clock):
            return super().decode_s(batch, kv, clock) * (1.3 if batch > 128 else 1.0)

    r = PredictiveRouter(Step(), CLOCKS, 0.05)
    # Instance 0 sits on the step (128 -> 129 costs 30 %); instance 1 has room below it.
    assert r.choose(100, [view(0, 128, 128 * 200), view(1, 100, 100 * 200)]) == 1


def test_router_when_no_instance_can_keep_the_budget_takes_the_least_loaded():
    r = PredictiveRouter(Linear(), CLOCKS, 0.001)
    assert r.choose(100, [view(0, 50, 5000), view(1, 10, 1000), view(2, 30, 3000)]) == 1


# --- the oracle --------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(base=st.floats(0.001, 0.2), noise=st.floats(0.8, 1.25), wait=st.floats(0, 0.5), margin=st.sampled_from([0.0, 0.3]))
def test_the_oracle_never_misses_a_budget_the_top_clock_meets(base, noise, wait, margin):
    truth = lambda c: base * noise * 1410 / c  # noqa: E731
    for phase, slo in (("decode", 0.05), ("prefill", 0.8)):
        o = OracleController(phase, CLOCKS, slo, margin=margin)
        obs = Observation(0.0, 4, 4000, oldest_wait_s=wait if phase == "prefill" else 0.0, truth_s=truth)
        c = o.decide(obs)
        budget = slo * (1 - margin) - obs.oldest_wait_s
        if truth(1410) <= budget:
            assert truth(c) <= budget and (c == CLOCKS[0] or truth(CLOCKS[CLOCKS.index(c) - 1]) > budget)
        else:
            assert c == 1410


def test_the_oracle_refuses_a_world_without_truth():
    with pytest.raises(RuntimeError, match="ground truth"):
        OracleController("decode", CLOCKS, 0.05).decide(Observation(0.0, 1, 10))


def test_a_prefill_instance_kept_busy_raises_its_clock_and_an_idle_one_does_not():
    """The queue plan sees only what is queued; the busy fraction sees the arrivals to come."""
    def drive(gap: float) -> int:
        ctl = FeedbackController("prefill", LatencyOnly(), CLOCKS, 0.8, FeedbackParams(max_utilization=0.8))
        now, clock = 0.0, 0
        for _ in range(60):
            clock = ctl.decide(Observation(now, 1, 512, last_latency_s=0.03, last_clock_mhz=clock or CLOCKS[0],
                                           last_batch_size=1, last_num_tokens=512))
            now += 0.03 + gap
        return clock

    assert drive(gap=0.0) == CLOCKS[-1]  # busy all the time: only the top clock can lower the load
    assert drive(gap=0.2) == CLOCKS[0]  # busy 13 % of the time: the lowest clock is plenty


def test_requests_gated_on_decode_kv_raise_the_decode_clock():
    ctl = [FeedbackController("decode", LatencyOnly(), CLOCKS, 0.05, FeedbackParams(backlog_gain=4.0)) for _ in range(2)]
    free = ctl[0].decide(Observation(0.0, 250, 250 * 800))
    gated = ctl[1].decide(Observation(0.0, 250, 250 * 800, queued_tokens=5, queued_oldest_wait_s=0.3))
    assert gated > free


def test_router_does_not_send_more_to_an_instance_whose_kv_cache_holds_prefills_back():
    r = PredictiveRouter(Linear(), CLOCKS, 0.05)
    assert r.choose(500, [view(0, 40, 40_000), view(1, 60, 60_000)]) == 0  # the less loaded, as cheap
    full = InstanceView(0, 40, 40_000, 1005, 40_000, gated=3)
    assert r.choose(500, [full, view(1, 60, 60_000)]) == 1  # the same instance, but its prefills already wait


def test_the_overload_rule_reads_a_smoothed_rate_so_a_burst_does_not_switch_but_a_sustained_load_does():
    """With ``overload_tau_s`` the top clock needs the arrival rate above the threshold for a while: a
    one-second burst over it leaves a light batch at the lowest clock; the same rate held does not."""
    p = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_tau_s=5.0)

    def run(ctl: FeedbackController, rates: list[float]) -> list[int]:
        return [ctl.decide(Observation(0.02 * i, 8, 4000, rate_rps=r)) for i, r in enumerate(rates)]

    calm, burst = [10.0] * 250, [40.0] * 50  # 5 s at 10 req/s, then 1 s at 40
    seen = run(FeedbackController("decode", Linear(), CLOCKS, 0.05, p), calm + burst + calm)
    assert max(seen) == 1005  # the smoothed rate peaks near 10 + 30 (1 - e^-0.2) = 15.4 < 30
    held = run(FeedbackController("decode", Linear(), CLOCKS, 0.05, p), calm + [40.0] * 1000)
    assert held[-1] == 1410 and held[300] == 1005  # switched after about 5 ln(3) = 5.5 s above, not at once
    raw = run(FeedbackController("decode", Linear(), CLOCKS, 0.05, FeedbackParams(headroom=0.0, dwell_s=0.0,
                                                                                  overload_rps=30.0)), calm + burst)
    assert raw[-1] == 1410  # without smoothing the burst switches it


def test_the_overload_rule_reads_a_sustained_load_from_the_start():
    """The overload rule's further smoothing is a weighted mean from the first reading on: a run that starts
    at a rate above the threshold switches to the top clock within its first readings, instead of waiting
    for a mean still climbing from the first reading (about ``tau * ln(40 / 10)`` = 7 s here)."""
    p = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_tau_s=5.0)
    ctl = FeedbackController("decode", Linear(), CLOCKS, 0.05, p)
    seen = [ctl.decide(Observation(0.02 * i, 8, 4000, rate_rps=40.0)) for i in range(50)]  # the first second
    assert seen[1:] == [1410] * 49
    low = FeedbackController("decode", Linear(), CLOCKS, 0.05, p)
    assert max(low.decide(Observation(0.02 * i, 8, 4000, rate_rps=20.0)) for i in range(50)) == 1005


def test_the_overload_rule_with_a_confidence_margin_ignores_a_runs_first_seconds_but_not_a_sustained_load():
    """With ``overload_z`` the rule compares the smoothed rate less z standard errors of a Poisson rate over
    the smoothing's window: the window is the time elapsed at first (a plain mean of a few readings is
    uncertain), so a rate 10 % above the threshold does not switch in the first second; held, it does once
    the window holds enough of it; far above, it switches at once as without the margin."""
    p = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_tau_s=20.0, overload_z=1.0)

    def run(rate: float, seconds: float, params: FeedbackParams = p) -> list[int]:
        ctl = FeedbackController("decode", Linear(), CLOCKS, 0.05, params)
        return [ctl.decide(Observation(0.02 * i, 8, 4000, rate_rps=rate)) for i in range(int(seconds / 0.02))]

    plain = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_tau_s=20.0)
    assert run(33.0, 1.0, plain)[1:] == [1410] * 49  # no margin: the first readings switch it
    first = run(33.0, 1.0)
    assert max(first) == 1005  # 33 - sqrt(33 / 1 s) = 27.3 < 30 after a second
    held = run(33.0, 30.0)
    assert held[-1] == 1410  # 33 - sqrt(33 / window) > 30 once the window passes 33 / 9 = 3.7 s
    assert run(120.0, 0.1)[1:] == [1410] * 4  # far above: 120 - sqrt(120 / 2) > 30 at once


def test_the_weighted_means_window_is_the_time_elapsed_at_first_and_twice_its_time_constant_at_last():
    from voltana_cli.core.policy.controller import WeightedMean

    m = WeightedMean(20.0)
    assert m.window_s() == 0.0
    m.add(10.0, 0.1)
    assert m.window_s() == pytest.approx(0.1, rel=0.01)
    for _ in range(2000):
        m.add(10.0, 0.1)
    assert m.window_s() == pytest.approx(40.0, rel=1e-3)  # 2 tau, less exp(-10) of it


def test_the_overload_ramp_raises_the_lowest_clock_allowed_step_by_step_with_the_rate():
    """With ``overload_ramp`` the overload rule is a slope: below ``rps * (1 - ramp)`` it changes nothing,
    at ``rps`` the lowest clock allowed is the middle level, above ``rps * (1 + ramp)`` it is the top; in
    between the clock never falls as the rate rises (a light batch, which alone would run at the floor)."""
    p = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_ramp=0.2)
    levels = p.levels(CLOCKS)

    def at(rate: float) -> int:
        ctl = FeedbackController("decode", Linear(), CLOCKS, 0.05, p)
        return ctl.decide(Observation(0.0, 8, 4000, rate_rps=rate))

    assert at(20.0) == at(24.0) == levels[0]
    assert at(30.0) == levels[(len(levels) - 1) // 2 + (len(levels) - 1) % 2]  # ceil of the half-way index
    assert at(36.0) == at(50.0) == levels[-1]
    seen = [at(24.0 + 0.25 * i) for i in range(49)]  # 24 ... 36 req/s
    assert seen == sorted(seen) and len(set(seen)) > 5  # rises through the levels, never falls
    step = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0)  # ramp 0: the step at 30
    assert FeedbackController("decode", Linear(), CLOCKS, 0.05, step).decide(
        Observation(0.0, 8, 4000, rate_rps=29.0)) == levels[0]
    with pytest.raises(ValueError, match="overload_ramp"):
        FeedbackParams(overload_ramp=1.0).check()


def test_the_overload_round_moves_the_slopes_steps_from_rounding_up_to_the_nearest_level():
    """``overload_round`` 0 (the default, what a file without it means) rounds the slope's share of the way up
    to the next level: the second level as soon as the rate enters the slope. 0.5 rounds to the nearest level:
    the lowest level holds through the first half-level of the slope, and every clock allowed is at most the
    rounded-up one; both reach the top at the slope's end and never fall as the rate rises."""
    def clocks(rnd: float) -> list[int]:
        p = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_ramp=0.2, overload_round=rnd)
        return [FeedbackController("decode", Linear(), CLOCKS, 0.05, p).decide(
            Observation(0.0, 8, 4000, rate_rps=24.0 + 0.25 * i)) for i in range(49)]  # 24 ... 36 req/s

    levels = FeedbackParams().levels(CLOCKS)
    n = len(levels) - 1
    up, nearest = clocks(0.0), clocks(0.5)
    for seen in (up, nearest):
        assert seen == sorted(seen) and seen[0] == levels[0] and seen[-1] == levels[-1]
    assert all(b <= a for a, b in zip(up, nearest, strict=True)) and nearest != up
    # 24 + 12 * share req/s: just inside the slope, rounding up already allows the second level, nearest not
    inside = 24.0 + 12.0 * 0.4 / n

    def at(rnd: float, rate: float) -> int:
        p = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_ramp=0.2, overload_round=rnd)
        return FeedbackController("decode", Linear(), CLOCKS, 0.05, p).decide(Observation(0.0, 8, 4000, rate_rps=rate))

    assert (at(0.0, inside), at(0.5, inside)) == (levels[1], levels[0])
    assert at(0.5, 24.0 + 12.0 * 0.6 / n) == levels[1]  # past half a level: the nearest is the second
    # a slope without a threshold (the default, infinite) is off, as the step is: the floor, no arithmetic on inf
    off = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_ramp=0.2, overload_round=0.5)
    assert FeedbackController("decode", Linear(), CLOCKS, 0.05, off).decide(
        Observation(0.0, 8, 4000, rate_rps=1e6)) == levels[0]
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="overload_round"):
            FeedbackParams(overload_round=bad).check()


def test_the_overload_curve_bends_the_slope_and_keeps_its_ends():
    """``overload_curve`` > 1 keeps the lowest clock allowed low longer, then rises steeply (static-best's
    shape along the load); < 1 the reverse. The slope's ends and its never falling stay as with 1."""
    def clocks(curve: float) -> list[int]:
        p = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_ramp=0.2, overload_curve=curve)
        return [FeedbackController("decode", Linear(), CLOCKS, 0.05, p).decide(
            Observation(0.0, 8, 4000, rate_rps=24.0 + 0.5 * i)) for i in range(25)]  # 24 ... 36 req/s

    straight, bent, bowed = clocks(1.0), clocks(2.0), clocks(0.5)
    for seen in (straight, bent, bowed):
        assert seen == sorted(seen) and seen[0] == straight[0] and seen[-1] == straight[-1]
    assert all(b <= s <= w for b, s, w in zip(bent, straight, bowed, strict=True))
    assert bent[12] < straight[12] < bowed[12]  # at the threshold itself
    with pytest.raises(ValueError, match="overload_curve"):
        FeedbackParams(overload_curve=0.0).check()


def test_the_overload_rule_ends_at_its_overload_floor_not_the_top_clock():
    """``overload_floor_mhz``: above the threshold the lowest clock allowed is the highest level at or below
    it, so a light batch runs there, not at the top; a batch that needs more still gets more."""
    p = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_floor_mhz=1200)
    light = FeedbackController("decode", Linear(), CLOCKS, 0.05, p).decide(Observation(0.0, 8, 4000, rate_rps=40.0))
    assert light == max(c for c in p.levels(CLOCKS) if c <= 1200)
    assert FeedbackController("decode", Linear(), CLOCKS, 0.05, p).decide(
        Observation(0.0, 8, 4000, rate_rps=20.0)) == CLOCKS[0]  # below the threshold: the floor
    heavy = FeedbackController("decode", Linear(), CLOCKS, 0.0055, p).decide(Observation(0.0, 8, 4000, rate_rps=40.0))
    assert heavy > light  # a tight SLO still raises it
    ramp = FeedbackParams(headroom=0.0, dwell_s=0.0, overload_rps=30.0, overload_ramp=0.2, overload_floor_mhz=1200)
    seen = [FeedbackController("decode", Linear(), CLOCKS, 0.05, ramp).decide(
        Observation(0.0, 8, 4000, rate_rps=20.0 + i)) for i in range(20)]
    assert seen == sorted(seen) and seen[0] == CLOCKS[0] and seen[-1] == light


def test_the_tail_loop_tracks_the_quantile_it_is_asked_for():
    """With ``quantile`` > 0 the SLO loop's observed latency settles at that quantile of what it reads, not at
    the mean: latencies of 20 ms with one in ten at 60 ms have a mean of 24 ms and a 0.95-quantile of 60."""
    p = FeedbackParams(quantile=0.95, quantile_gain=0.01, kp=0.0, ki=0.0)
    tail = FeedbackController("decode", LatencyOnly(), CLOCKS, 0.05, p)
    mean = FeedbackController("decode", LatencyOnly(), CLOCKS, 0.05, FeedbackParams(kp=0.0, ki=0.0))
    for i in range(4000):
        last = 0.06 if i % 10 == 0 else 0.02
        for ctl in (tail, mean):
            ctl.decide(decode_obs(i * 0.03, 8, 8000, last=last, clock=1410))
    assert 0.045 < tail.observed_s <= 0.061  # between the body and the tail's value: the tail
    assert 0.02 < mean.observed_s < 0.03
    # The tail sits above the 45 ms target, so its error lowers the budget where the mean's raises it.
    q = FeedbackParams(quantile=0.95, quantile_gain=0.01, kp=0.5, ki=0.1)
    ctl = FeedbackController("decode", LatencyOnly(), CLOCKS, 0.05, q)
    for i in range(4000):
        ctl.decide(decode_obs(i * 0.03, 8, 8000, last=0.06 if i % 10 == 0 else 0.02, clock=1410))
    assert ctl.correction < 0


def test_the_tail_loop_lifts_the_lowest_clock_while_the_tail_is_late_and_lowers_it_after():
    """``lift_gain`` > 0: a tail above the target lifts the lowest clock allowed (within the levels), one that
    recovers lets it down again, and an idle timeout forgets it."""
    p = FeedbackParams(quantile=0.9, quantile_gain=0.02, kp=0.0, ki=0.0, lift_gain=1.0, dwell_s=0.0)
    ctl = FeedbackController("decode", LatencyOnly(), CLOCKS, 0.05, p)
    light = 8, 800  # a batch the lowest clock serves far inside the budget
    for i in range(300):  # every iteration late: the tail is above the target
        clock = ctl.decide(decode_obs(i * 0.1, *light, last=0.1, clock=ctl.current))
    assert ctl.lift == len(ctl.levels) - 1 and clock == max(ctl.levels)
    for i in range(300, 3000):  # every iteration fast: the tail falls below the target and the lift with it
        clock = ctl.decide(decode_obs(i * 0.1, *light, last=0.01, clock=ctl.current))
    assert ctl.lift == 0 and clock == min(ctl.levels)
    for i in range(3000, 3100):
        ctl.decide(decode_obs(i * 0.1, *light, last=0.1, clock=ctl.current))
    assert ctl.lift > 0
    ctl.on_idle_timeout()
    assert ctl.lift == 0


@pytest.mark.parametrize("bad", [dict(quantile=1.0), dict(quantile=-0.1), dict(lift_gain=-1.0),
                                 dict(quantile_gain=float("nan"))])
def test_tail_loop_knobs_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        FeedbackParams(**bad).check()
