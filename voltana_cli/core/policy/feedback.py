"""A feedback frequency controller: per iteration, the clock that costs least while the iteration fits a
latency budget that the instance's own observed latencies correct online.

EcoFreq (``controller.EcoFreqController``) trusts its predictor open-loop and reads a target fixed by hand
(``slo * (1 + margin)``); it forces the top clock whenever work is queued. This controller closes the loop
twice, and plans over the queue:

1. **Predictor correction (inner loop).** Each iteration it compares the previous iteration's measured
   latency with what the predictor said for that very shape and clock; an exponentially weighted mean of
   the ratio scales every prediction. A biased predictor (EcoPred fitted on another day, the analytical
   model's ±5 %) is corrected within a few iterations. (GreenLLM's decode controller pairs a fast
   latency-tracking loop with a slower SLO loop in the same way, arXiv 2508.16449.)
2. **SLO loop (outer loop).** The budget is ``target * (1 + u)`` with ``target = slo * (1 - headroom)``
   and ``u`` a PI law on the relative SLO error over a short window: decode reads the inter-token
   latencies its requests just saw; prefill reads the TTFTs of the requests it just served. Because clocks
   are discrete, the chosen clock usually runs faster than the budget; the integral term spends that slack
   (the budget rises until the observed mean sits at the target), and withdraws it as soon as observed
   latencies climb. The integral is clamped (anti-windup) and the correction is bounded, so a long idle
   period or an overload cannot wind it up.
3. **Backlog (decode).** In a P/D cluster a request's prefill waits until its decode instance has KV for
   it; when the cache is full, that wait is TTFT that only a faster decode gives back (finished requests
   free their KV sooner). The decode budget shrinks by ``1 + backlog_gain * wait`` while requests are
   gated, ``wait`` being the oldest gated request's wait in seconds. (throttLL'eM projects KV occupancy
   ahead to the same end, arXiv 2408.05235; this reacts to the gate itself, which the engine knows.)
4. **Utilisation (prefill).** A queue that is drained in time now can still grow without bound if the
   clock leaves the instance busier than its arrivals allow. The controller keeps a smoothed busy fraction
   (iteration time over wall time between decisions) and takes a clock only if the busy fraction projected
   to it (scaled by the predicted speed ratio) stays below ``max_utilization``. (Queueing theory's
   stability condition; the one-step queue plan below cannot see the arrivals to come.)
5. **Overload.** Above a tuned arrival rate the instance runs at its top clock (EcoFreq's rule 1, whose
   published thresholds sit above any load; here the threshold is searched like every other knob). The
   rate it compares is the instance's arrival rate smoothed further over ``overload_tau_s``: a Poisson
   stream's one-second bursts at a load below the threshold then do not switch the instance to its top
   clock, and a sustained load above it does within a few time constants. With ``overload_z`` > 0 the rule
   compares the smoothed rate less that many standard errors of a Poisson rate measured over the smoothing's
   window: early in a run the window is the few seconds seen so far, and a mean of them wanders (A100 x
   Llama-3.1-8B at 70 req/s in all, held-out seeds: a prefill switch at 37.5 req/s per instance on a 5 s
   mean had 69 % and 86 % of the decisions above it in a run's first 10 s, one at 36.5 on a 30 s mean all of
   them in the first 15 s; see ``run.SWITCH_Z`` for what a margin saved). With ``overload_ramp`` > 0 the
   switch becomes a slope: the lowest clock allowed rises through the levels as the smoothed rate goes from
   ``overload_rps * (1 - ramp)`` to ``overload_rps * (1 + ramp)``: the share of the way up, counted in
   levels, is rounded up after ``overload_round`` is taken off it (0: rounded up, a level higher than the
   nearest as soon as the rate enters the slope; 0.5: to the nearest level). A step must sit between the heaviest
   rate the light-load rule serves and the lightest it does not, and a smoothed Poisson rate crosses it in
   bursts: A100 x Llama-3.1-8B, the paper's rule with a step at 37.5 req/s per instance spent 4 % more than
   without it at 70 req/s, to keep the requirement at 75 and 80; a slope of 0.2 around 36 (prefill) and 38
   (decode) spent 2 % more at 70 and 3.6 / 4.4 % less than the step at 75 / 80, both still meeting it
   (fixed knobs, held-out seeds). The slope or step ends at ``overload_floor_mhz`` rather than the top clock
   where that is enough: static-best's clocks rise with the load (H100 x Llama-3.1-8B: 825/720 MHz at 80
   req/s, 1350/1245 at 140, nowhere near the top 1980), so a slope between the floors of the lightest and
   the heaviest rate follows it, and the feedback above it answers the bursts.
6. **Queue planning (prefill).** A prefill iteration must serve its own oldest request in time *and* leave
   time for the work queued behind it: the clock must fit ``budget - oldest_wait`` for this batch and
   ``budget - queued_oldest_wait`` for this batch plus the queued tokens, at the same clock. (BiScale plans
   prefill clocks over the queue with model-predictive control; this is its one-step form, which needs no
   arrival forecast.) EcoFreq's "queued work forces the top clock" becomes a consequence rather than a rule:
   the top clock is chosen only when nothing lower can drain the queue in time.

7. **Tail loop.** Attainment is a tail: the share of requests within the SLO. A PI law on the mean TTFT
   loosens the budget whenever the mean sits below its target, which it does short of overload (A100 x
   Llama-3.1-8B at 75 req/s, held-out seeds, the paper's policy: a mean TTFT of 332 ms, under its 450 ms
   target, while 3.3 % of requests missed the 800 ms SLO), so the loop spends slack the tail needed. With
   ``quantile`` > 0 the loop reads that quantile of the observed latencies instead, tracked online by
   stochastic approximation (each sample moves the estimate up ``quantile`` steps when above it and down
   ``1 - quantile`` steps when below, so it settles where that share of samples lies below). With
   ``lift_gain`` > 0 the same error also lifts the lowest clock allowed while the tail is late, and lets it
   down as the tail recovers: a floor set by the SLO outcome rather than by an arrival-rate threshold, which
   a 60 s run's rate estimate cannot place between two loads 7 % apart (a Poisson rate of 37.5 req/s per
   instance measured over 20 s has a standard error of 1.4 req/s, more than half the gap to 35 req/s). It
   reacts only after requests were late, and on A100 x Llama-3.1-8B it cost more energy at 70 req/s than it
   kept attainment at 75 (``run.TAIL_KP``); the search decides.

Among the clocks that fit, it takes the cheapest when the predictor has an energy model, else the lowest.
A prefill clock is priced by the iteration's predicted energy above idle, ``E(c) - P_idle * t(c)`` (its work
is its tokens, and the least energy is not always at the lowest clock: static power is paid per second).
A prefill instance that is not saturated idles between batches, so what an iteration costs beyond the time
it takes is its energy less the idle power it would have drawn in that time: over a run of length ``T``,
energy = sum(E_i - P_idle * t_i) + P_idle * T. Priced by ``E(c)`` alone, an H100 prefill instance at 80
req/s ran at 1035 MHz, within 0.3 % of 825 MHz's busy energy, and then idled 7 s longer in a 72 s run, at a
higher clock (``benchmarks/tune_table.py --gpu h100-80g-sxm``). ``P_idle`` is the predictor's idle power at
the clock the instance idles at (its lowest); a predictor without one (EcoPred: profiles do not measure
idle) prices by ``E(c)``. A decode clock is priced by its predicted power: a decode instance runs
iterations back to back while it has requests, and a slower clock grows its batches (more requests in
flight), so what it spends over time is power, not a fixed number of iterations' energy.

A predictor's error decides between clocks whose costs differ by less than it (the analytical predictor's
is up to 5 % per clock), while power surely falls with the clock; so clocks within ``tie_tolerance`` of the
cheapest count as equal and the lowest is taken. (H100 x Llama-3.1-8B at 80 req/s: the prefill instances
ran at 1035 MHz, whose predicted energy was lowest by less than the error, and spent about 2 % more in all
than at 825 MHz.) Lowering waits ``dwell_s`` after the last change and needs a ``hysteresis`` fraction of
slack (no flapping under constant load); raising is immediate. The clock never falls when the iteration grows
(more requests, tokens or waiting), because every prediction is monotone in them.

Pure: no clocks are read, no time is slept, nothing is imported from the worlds. The same object runs in
the simulator and, later, in the live sidecar, fed by ``Observation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from voltana_cli.core.policy.controller import RATE_TAU_S, Observation, WeightedMean
from voltana_cli.core.policy.predictor import Predictor


@dataclass(frozen=True)
class FeedbackParams:
    """The knobs of one phase's feedback controller (what ``voltana tune`` searches).

    Attributes:
        headroom: the target is ``slo * (1 - headroom)``; negative values aim above the SLO (the ITL rule
            is a per-request mean, so single iterations may exceed it).
        kp: proportional gain on the relative SLO error.
        ki: integral gain (per iteration) on the relative SLO error.
        window: iterations in the error's moving mean (and the predictor correction's time constant).
        integral_limit: anti-windup bound on the integral state, in units of relative error.
        max_correction: the budget stays within ``target * (1 ± max_correction)``.
        floor_mhz: the lowest clock the controller uses (low clocks can cost more energy per token).
        step: use every ``step``-th supported clock from ``floor_mhz`` up (the top clock always).
        dwell_s: minimum time at a clock before lowering it.
        backlog_gain: decode: the budget is divided by ``1 + backlog_gain * gated_wait_s``.
        max_utilization: prefill: the busy fraction a clock may be projected to reach (1: no limit).
        overload_rps: the instance's arrival rate (req/s) above which it runs at its top clock: EcoFreq's
            rule 1, as a tuned threshold (infinity: off).
        overload_tau_s: time constant (s) of the further smoothing of the arrival rate that the overload
            rule reads (0: the rate as observed).
        overload_ramp: 0: the overload rule is a step at ``overload_rps``; > 0: the lowest clock allowed
            rises through the levels from ``overload_rps * (1 - ramp)`` to ``overload_rps * (1 + ramp)``.
        overload_floor_mhz: the lowest clock allowed at the end of the step or slope: the highest level at
            or below it (0: the top clock, EcoFreq's rule 1).
        overload_curve: the slope's shape: the share of the way up its levels is the share of the way
            through its rates to this power (1: straight; 2: flat first, then steep, as static-best's clocks
            rise with the load: H100 x Llama-3.1-8B, 80..140 req/s, held-out seeds, decode 720 MHz up to
            100 req/s, then 825, 930, 1035, 1245).
        overload_z: the overload rule compares the smoothed rate less this many of its standard errors (a
            Poisson rate measured over the smoothing's effective window, shorter while the smoothing fills):
            the load must be above the threshold with that confidence (0: the estimate itself).
        overload_round: taken off the slope's share of the way up, counted in levels, before it is rounded
            up to a level: 0 rounds up (the rule before this knob, and what a file without it means), 0.5
            rounds to the nearest level; in [0, 1).
        quantile: 0: the SLO loop reads the observed latency's moving mean; in (0, 1): that quantile of it,
            tracked online (see the module docstring, item 7).
        quantile_gain: the quantile tracker's step, as a share of the SLO per sample.
        lift_gain: > 0: the SLO loop's error also lifts the lowest clock allowed, by this many levels per
            unit of relative error per sample (0: it moves the budget only).
        hysteresis: a lower clock must fit ``budget * (1 - hysteresis)`` to be taken.
        idle_timeout_s: idle time after which the instance drops to its lowest clock.
        tie_tolerance: clocks whose predicted cost is within this share of the cheapest count as equally
            cheap, and the lowest of them is taken (see the module docstring; 0: the cheapest).
    """

    headroom: float = 0.1
    kp: float = 0.3
    ki: float = 0.05
    window: int = 16
    integral_limit: float = 2.0
    max_correction: float = 0.5
    floor_mhz: int = 0
    step: int = 1
    dwell_s: float = 0.05
    backlog_gain: float = 2.0
    max_utilization: float = 0.85
    overload_rps: float = float("inf")
    overload_tau_s: float = 0.0
    hysteresis: float = 0.03
    idle_timeout_s: float = 5.0
    tie_tolerance: float = 0.0
    overload_ramp: float = 0.0
    overload_floor_mhz: int = 0
    overload_curve: float = 1.0
    overload_z: float = 0.0
    overload_round: float = 0.0
    quantile: float = 0.0
    quantile_gain: float = 0.02
    lift_gain: float = 0.0

    def levels(self, clocks_mhz: tuple[int, ...]) -> list[int]:
        """The clocks this controller chooses among, ascending: every ``step``-th from ``floor_mhz``, and the top."""
        usable = [c for c in sorted(clocks_mhz) if c >= self.floor_mhz] or [max(clocks_mhz)]
        chosen = usable[:: max(1, self.step)]
        if chosen[-1] != usable[-1]:
            chosen.append(usable[-1])
        return chosen

    def check(self) -> None:
        """Refuse knobs no controller can run with (``ValueError`` naming the knob)."""
        for name in ("kp", "ki", "integral_limit", "max_correction", "dwell_s", "backlog_gain", "hysteresis",
                     "idle_timeout_s", "overload_tau_s", "tie_tolerance", "overload_z", "quantile_gain", "lift_gain"):
            v = getattr(self, name)
            if not (v >= 0 and (math.isfinite(v) or name == "idle_timeout_s")):  # NaN fails ``v >= 0``
                raise ValueError(f"feedback {name} {v} must be a finite number >= 0")
        if not -1.0 < self.headroom < 1.0:
            raise ValueError(f"feedback headroom {self.headroom} must be in (-1, 1)")
        if self.window < 1 or self.step < 1:
            raise ValueError("feedback window and step must be >= 1")
        if self.max_correction >= 1 or self.hysteresis >= 1:
            raise ValueError("feedback max_correction and hysteresis must be < 1")
        if self.overload_floor_mhz < 0:
            raise ValueError(f"feedback overload_floor_mhz {self.overload_floor_mhz} must be >= 0 (0: the top clock)")
        if not 0 <= self.overload_ramp < 1:
            raise ValueError(f"feedback overload_ramp {self.overload_ramp} must be in [0, 1)")
        if not 0 <= self.quantile < 1:
            raise ValueError(f"feedback quantile {self.quantile} must be in [0, 1) (0: the mean)")
        if not 0 <= self.overload_round < 1:
            raise ValueError(f"feedback overload_round {self.overload_round} must be in [0, 1)")
        if not (self.overload_curve > 0 and math.isfinite(self.overload_curve)):
            raise ValueError(f"feedback overload_curve {self.overload_curve} must be a finite number > 0")
        if not self.overload_rps > 0:
            raise ValueError(f"feedback overload_rps {self.overload_rps} must be > 0")
        if not 0 < self.max_utilization <= 1:
            raise ValueError(f"feedback max_utilization {self.max_utilization} must be in (0, 1]")


class FeedbackController:
    """The feedback controller of one phase (see the module docstring).

    Args:
        phase: ``"prefill"`` or ``"decode"``.
        predictor: latency (and, when it has ``decode_j``/``prefill_j``, energy) predictor.
        clocks_mhz: the supported clocks; ``params`` picks the levels among them.
        slo_s: TTFT SLO for prefill, ITL SLO for decode.
        params: the knobs.
    """

    def __init__(self, phase: str, predictor: Predictor, clocks_mhz: tuple[int, ...], slo_s: float,
                 params: FeedbackParams | None = None):
        if phase not in ("prefill", "decode"):
            raise ValueError(f"phase must be prefill or decode, not {phase!r}")
        p = params or FeedbackParams()
        p.check()
        self.phase, self.predictor, self.params, self.slo_s = phase, predictor, p, slo_s
        self.levels = p.levels(clocks_mhz)
        self.max_clock, self.min_clock = self.levels[-1], self.levels[0]
        self.target_s = slo_s * (1.0 - p.headroom)
        self.idle_timeout_s = p.idle_timeout_s
        self.idle_clock_mhz = self.min_clock
        self.current = self.min_clock
        self._since = -1e18
        self._alpha = 2.0 / (p.window + 1.0)
        self.bias = 1.0  # measured / predicted, smoothed
        self.observed_s = self.target_s  # smoothed observed latency (decode: ITL; prefill: TTFT)
        self.integral = 0.0
        self.lift = 0.0  # levels the SLO loop has lifted the lowest clock allowed by (``lift_gain``)
        self.correction = 0.0
        self._last_ttft = 0.0
        self.busy = 0.0  # smoothed busy fraction (prefill)
        self._prev_start: float | None = None  # when the previous iteration was decided
        self._is_decode = phase == "decode"
        self.load_rps = 0.0  # the arrival rate the overload rule reads (smoothed over overload_tau_s)
        self._load_t: float | None = None
        self._load_mean = WeightedMean(p.overload_tau_s)
        top = p.overload_floor_mhz or self.max_clock
        self._ramp = [c for c in self.levels if c <= top] or [self.min_clock]  # the overload rule's floors
        self._energy = getattr(predictor, "decode_j" if self._is_decode else "prefill_j", None)
        if self._energy is not None and not getattr(predictor, "has_energy", True):
            self._energy = None
        idle_w = getattr(predictor, "idle_w", None)
        self._idle_w = float(idle_w(self.idle_clock_mhz)) if idle_w is not None and not self._is_decode else 0.0

    # --- the loops ------------------------------------------------------------------------------------
    def _predict(self, batch: int, tokens: int, clock: int) -> float:
        if self._is_decode:
            return self.predictor.decode_s(batch, tokens, clock)
        return self.predictor.prefill_s(tokens, batch, clock)

    def _learn(self, obs: Observation) -> None:
        """Update the predictor correction, the busy fraction and the SLO loop from what the previous
        iteration measured."""
        a = self._alpha
        if not self._is_decode:
            prev, self._prev_start = self._prev_start, obs.now_s
            if prev is not None and obs.now_s > prev and obs.last_latency_s > 0:
                frac = min(obs.last_latency_s / (obs.now_s - prev), 1.0)
                self.busy += a * (frac - self.busy)
        if obs.last_latency_s > 0 and obs.last_clock_mhz in self.levels:
            pred = self._predict(obs.last_batch_size, obs.last_num_tokens, obs.last_clock_mhz)
            if pred > 0:
                ratio = min(max(obs.last_latency_s / pred, 0.5), 2.0)  # one outlier must not swing it
                self.bias += a * (ratio - self.bias)
        if self._is_decode:
            sample = obs.last_latency_s
        else:
            sample = obs.recent_ttft_s if obs.recent_ttft_s != self._last_ttft else 0.0
            self._last_ttft = obs.recent_ttft_s
        if sample <= 0:
            return
        p = self.params
        if p.quantile > 0:  # stochastic quantile tracking: up by q steps above it, down by 1 - q below
            step = p.quantile_gain * self.slo_s
            self.observed_s += step * p.quantile if sample > self.observed_s else -step * (1.0 - p.quantile)
        else:
            self.observed_s += a * (sample - self.observed_s)
        err = (self.target_s - self.observed_s) / self.slo_s  # > 0: running faster than needed
        self.integral = min(max(self.integral + err, -p.integral_limit), p.integral_limit)
        if p.lift_gain > 0:
            self.lift = min(max(self.lift - p.lift_gain * err, 0.0), len(self.levels) - 1.0)
        u = p.kp * err + p.ki * self.integral
        self.correction = min(max(u, -p.max_correction), p.max_correction)

    # --- the decision ---------------------------------------------------------------------------------
    def _fits(self, obs: Observation, clock: int, budget: float) -> bool:
        b = self.bias
        if self._is_decode:
            return b * self.predictor.decode_s(obs.batch_size, obs.num_tokens, clock) <= budget
        this = b * self.predictor.prefill_s(obs.num_tokens, obs.batch_size, clock)
        if this > budget - obs.oldest_wait_s:
            return False
        limit = self.params.max_utilization
        if limit < 1.0 and self.busy > 0:
            here = self.predictor.prefill_s(obs.num_tokens, obs.batch_size, self.current)
            if here > 0 and self.busy * (this / b) / here > limit:
                return False
        if obs.queued_tokens <= 0:
            return True
        behind = b * self.predictor.prefill_s(obs.queued_tokens, max(obs.queued, 1), clock)
        return this + behind <= budget - obs.queued_oldest_wait_s

    def _cost(self, obs: Observation, clock: int) -> float:
        if self._energy is None:
            return float(clock)
        if not self._is_decode:
            energy = float(self._energy(obs.num_tokens, obs.batch_size, clock))
            if self._idle_w > 0:
                energy -= self._idle_w * self.predictor.prefill_s(obs.num_tokens, obs.batch_size, clock)
            return energy
        # Decode: its predicted power (see the module docstring). Priced by energy per iteration instead, the
        # controller held 1005 MHz on A100 at 50 req/s where 780 MHz meets the ITL SLO and spends about 3 % less
        # energy in all (``benchmarks/tune_table.py``).
        t = self.predictor.decode_s(obs.batch_size, obs.num_tokens, clock)
        energy = float(self._energy(obs.batch_size, obs.num_tokens, clock))
        return energy / t if t > 0 else energy

    def _load(self, obs: Observation) -> float:
        """The arrival rate the overload rule compares, after folding in this observation's: a weighted mean
        from the first reading on (a plain mean while less than ``overload_tau_s`` has passed, not a value
        still rising from the first reading), less ``overload_z`` standard errors of it. ``load_rps`` keeps
        the estimate itself."""
        p = self.params
        last, self._load_t = self._load_t, obs.now_s
        smoothed = False
        if p.overload_tau_s <= 0 or last is None:
            self.load_rps = obs.rate_rps
        else:
            smoothed = True
            if obs.now_s > last:
                self.load_rps = self._load_mean.add(obs.rate_rps, obs.now_s - last)
        if p.overload_z <= 0:
            return self.load_rps
        # The lower confidence bound: the smoothing's window, or (unsmoothed, or no interval yet) that of the
        # world's own estimate, a weighted mean over ``RATE_TAU_S``.
        window = (self._load_mean.window_s() if smoothed else 0.0) or 2.0 * RATE_TAU_S
        return self.load_rps - p.overload_z * math.sqrt(max(self.load_rps, 0.0) / window)

    def _want(self, obs: Observation) -> int:
        load, p = self._load(obs), self.params
        lowest = 0
        if p.overload_ramp > 0 and p.overload_rps < math.inf:  # an infinite threshold is off, slope or step
            lo = p.overload_rps * (1.0 - p.overload_ramp)
            frac = min(max((load - lo) / (2.0 * p.overload_ramp * p.overload_rps), 0.0), 1.0) ** p.overload_curve
            lowest = self._ramp[max(math.ceil(frac * (len(self._ramp) - 1) - p.overload_round), 0)]
        elif load > p.overload_rps:
            lowest = self._ramp[-1]
        if self.lift >= 1.0:
            lowest = max(lowest, self.levels[int(self.lift)])
        budget = self.target_s * (1.0 + self.correction)
        if self._is_decode and obs.queued_oldest_wait_s > 0:
            budget /= 1.0 + p.backlog_gain * obs.queued_oldest_wait_s
        best, best_cost = self.max_clock, float("inf")
        tol = p.tie_tolerance
        fitting: list[tuple[int, float]] = []
        for c in self.levels:
            if c < lowest:
                continue
            slack = budget * (1.0 - p.hysteresis) if c < self.current else budget
            if self._fits(obs, c, slack):
                cost = self._cost(obs, c)
                if cost < best_cost:
                    best, best_cost = c, cost
                if self._energy is None:
                    break  # the lowest fitting clock
                if tol > 0:
                    fitting.append((c, cost))
        if fitting:  # the lowest clock as cheap as the cheapest, within the tolerance (ascending: the first)
            limit = best_cost + abs(best_cost) * tol
            return next(c for c, cost in fitting if cost <= limit)
        return best

    def decide(self, obs: Observation) -> int:
        self._learn(obs)
        want = self._want(obs)
        cur = self.current
        if want < cur and obs.now_s - self._since < self.params.dwell_s:
            return cur
        if want != cur:
            self.current = want
            self._since = obs.now_s
        return want

    def on_idle_timeout(self) -> None:
        """Idle for ``idle_timeout_s``: drop to the lowest clock and forget the queue's transient."""
        self.current = self.min_clock
        self.integral = 0.0
        self.lift = 0.0
        self.correction = 0.0
        self.observed_s = self.target_s


@dataclass(frozen=True)
class TunedPolicy:
    """What ``voltana tune`` chooses: a feedback controller's knobs per phase and the two routers.

    Attributes:
        prefill: the prefill controllers' knobs.
        decode: the decode controllers' knobs.
        router: the registered decode router (``predictive``, ``tile-aware``, ...).
        router_headroom: the predictive router's ITL budget is ``slo * (1 - router_headroom)``.
        prefill_router: the registered router that picks prefill instances (``None``: the run's, what every
            other policy in it uses; tuned configs written before the tune chose it).
    """

    prefill: FeedbackParams = FeedbackParams()
    decode: FeedbackParams = FeedbackParams()
    router: str = "predictive"
    router_headroom: float = 0.1
    prefill_router: str | None = None

    @classmethod
    def default_for(cls, clocks_mhz: tuple[int, ...], levels_mhz: tuple[int, ...]) -> TunedPolicy:
        """The untuned default: clocks from the lowest EcoFreq level up, about 100 MHz apart."""
        spacing = (clocks_mhz[1] - clocks_mhz[0]) if len(clocks_mhz) > 1 else 100
        params = FeedbackParams(floor_mhz=min(levels_mhz), step=max(1, round(100 / max(spacing, 1))))
        return cls(prefill=params, decode=params)

    def clocks(self, clocks_mhz: tuple[int, ...]) -> list[int]:
        """Every clock either phase may choose (what a predictor must know)."""
        return sorted(set(self.prefill.levels(clocks_mhz)) | set(self.decode.levels(clocks_mhz)))
