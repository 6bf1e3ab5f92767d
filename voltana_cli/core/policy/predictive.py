"""The predictive decode router: EcoRoute as the paper describes it, a what-if over the decode instances.

For each candidate instance it asks the predictor two questions: which clock would the instance need to
keep its ITL budget now, and after taking this request (one more request, the prompt's KV more)? The
request's cost on that instance is the marginal predicted power, ``P(after) - P(before)``: a decode
instance runs iterations back to back while it has requests, so what it spends over time is power (the
decode controller prices its clocks the same way). An instance that would need more than its top clock to
keep the budget is infeasible, and so is one whose KV cache is full (prefills already wait for it: one more
request would add to their TTFT). Among the feasible instances the one that would need the lowest clock
after taking the request wins (power rises steeply with the clock: that is the cost a request can surely
add), then the least marginal power among those; costs that differ by less than the predictor's error
(``TIE_TOLERANCE`` of the instance's predicted power) count as equal, and ties go to the less loaded
instance. Batch-size boundaries (GEMM tiles, the end of CUDA graphs) need no constant here: they are steps in
the predictor's latency and energy (EcoPred finds them in a profile), so an instance just below a step
looks cheap and one just past it expensive.

One more request at the same clock changes an instance's power by far less than the tolerance, so what
decides is a clock that must rise or a step in the predicted energy; the rest is load balance. An empty
instance is priced as if it ran at its lowest level (one request, no KV): the decode instances of a P/D
cluster are provisioned and stay on, so the router prices the request, not waking the instance. Greedy
per-request marginals cannot see what gathering costs later: the gathered instance's batch outgrows its low
clocks while the other idles, and it takes more than its share of the arrivals (a tuned controller's
overload threshold is per instance). Priced by marginal energy per iteration alone, an empty instance
charged its whole iteration (as first built): A100 x Llama-3.1-8B, seed 0's tuned knobs with this router,
50 req/s, training seed 0: one decode instance held up to 385 requests and ran at 1410 MHz for 47 s of the
60 s run while the other idled, 28.5 % saved over both training seeds against 35.3 % with the least-loaded
router; as now, 35.0 %, both decode instances at 675 MHz (and 16.9 / 6.2 % at 80 / 90 req/s against
15.4 / 5.1 % least-loaded).

Pure: the predictor is the only knowledge of the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from voltana_cli.core.policy.predictor import Predictor
from voltana_cli.core.policy.router import InstanceView

#: Marginal powers within this share of the candidate's predicted power count as equal (the analytical
#: predictor's error is up to 5 % per clock; EcoPred's is reported by ``voltana tune --fit-only``).
TIE_TOLERANCE = 0.05


class PredictiveRouter:
    """Route each request to the decode instance where it costs the least predicted power.

    Args:
        predictor: latency predictor; its ``decode_j`` over ``decode_s`` (when it has an energy model) prices
            the what-if, else the clock stands in for power (power grows with the clock).
        levels_mhz: the clocks the decode controllers choose among.
        slo_itl_s: the ITL SLO.
        headroom: the budget is ``slo_itl_s * (1 - headroom)``.
    """

    def __init__(self, predictor: Predictor, levels_mhz: Sequence[int], slo_itl_s: float, headroom: float = 0.1):
        self.predictor = predictor
        self.levels = sorted(set(levels_mhz))
        self.budget_s = slo_itl_s * (1.0 - headroom)
        energy = getattr(predictor, "decode_j", None)
        self._energy = energy if energy is not None and getattr(predictor, "has_energy", True) else None

    def _clock(self, batch: int, kv: int) -> int | None:
        """The lowest level at which a batch keeps the budget; ``None``: not even the top one does."""
        for c in self.levels:
            if self.predictor.decode_s(batch, kv, c) <= self.budget_s:
                return c
        return None

    def _power_w(self, batch: int, kv: int, clock: int) -> float:
        t = self.predictor.decode_s(batch, kv, clock)
        if self._energy is not None:
            return float(self._energy(batch, kv, clock)) / t if t > 0 else 0.0
        return float(clock)  # no energy model: power grows with the clock

    def cost(self, view: InstanceView, input_tokens: int) -> tuple[bool, int, float, float]:
        """(feasible, the clock it would need after, marginal predicted power, predicted power after) of
        sending a request of ``input_tokens`` to ``view``."""
        n, kv = view.num_requests, view.kv_tokens
        after = self._clock(n + 1, kv + input_tokens)
        # An instance whose KV cache already holds prefills back cannot take more without adding to TTFT.
        ok = after is not None and view.gated == 0
        clock = after or self.levels[-1]
        p_after = self._power_w(n + 1, kv + input_tokens, clock)
        before = (self._power_w(n, kv, self._clock(n, kv) or self.levels[-1]) if n > 0
                  else self._power_w(1, 0, self.levels[0]))  # an empty instance: as if running, see above
        return ok, clock, p_after - before, p_after

    def choose(self, input_tokens: int, views: Sequence[InstanceView]) -> int:
        costs = [(v, *self.cost(v, input_tokens)) for v in views]
        feasible = [(v, clock, marginal, power) for v, ok, clock, marginal, power in costs if ok]
        if not feasible:  # no instance keeps the budget: the least loaded
            return min(views, key=lambda v: (v.num_requests, v.index)).index
        low = min(clock for _, clock, _, _ in feasible)
        feasible = [f for f in feasible if f[1] == low]
        cheapest = min(marginal for _, _, marginal, _ in feasible)
        tied = [v for v, _, marginal, power in feasible if marginal - cheapest <= TIE_TOLERANCE * abs(power)]
        return min(tied, key=lambda v: (v.num_requests, v.index)).index
