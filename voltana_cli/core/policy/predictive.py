"""The predictive decode router: EcoRoute as the paper describes it, a what-if over the decode instances.

For each candidate instance it asks the predictor two questions: which clock would the instance need to
keep its ITL budget now, and after taking this request (one more request, the prompt's KV more)? The
request's cost on that instance is the marginal energy per iteration, ``E(after) - E(before)``; an
instance that would need more than its top clock to keep the budget is infeasible, and so is one whose
KV cache is full (prefills already wait for it: one more request would add to their TTFT). The cheapest feasible
instance wins, ties go to the less loaded. Batch-size boundaries (GEMM tiles, the end of CUDA graphs) need
no constant here: they are steps in the predictor's latency and energy (EcoPred finds them in a profile),
so an instance just below a step looks cheap and one just past it expensive.

An empty instance has no iterations to make more expensive; its marginal energy is the whole iteration's,
so requests gather on instances that already run, as long as the budget holds (batching is where the
energy saving is), and spread when it would not. Pure: the predictor is the only knowledge of the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

from voltana_cli.core.policy.predictor import Predictor
from voltana_cli.core.policy.router import InstanceView


class PredictiveRouter:
    """Route each request to the decode instance where it costs the least predicted energy.

    Args:
        predictor: latency predictor; its ``decode_j`` (when it has an energy model) prices the what-if,
            else latency times clock stands in for energy (power grows with the clock).
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

    def _iteration_j(self, batch: int, kv: int, clock: int) -> float:
        if self._energy is not None:
            return float(self._energy(batch, kv, clock))
        return self.predictor.decode_s(batch, kv, clock) * clock

    def cost(self, view: InstanceView, input_tokens: int) -> tuple[bool, float]:
        """(feasible, marginal energy per iteration) of sending a request of ``input_tokens`` to ``view``."""
        n, kv = view.num_requests, view.kv_tokens
        after = self._clock(n + 1, kv + input_tokens)
        top = self.levels[-1]
        # An instance whose KV cache already holds prefills back cannot take more without adding to TTFT.
        ok = after is not None and view.gated == 0
        e_after = self._iteration_j(n + 1, kv + input_tokens, after or top)
        if n == 0:
            return ok, e_after
        before = self._clock(n, kv) or top
        return ok, e_after - self._iteration_j(n, kv, before)

    def choose(self, input_tokens: int, views: Sequence[InstanceView]) -> int:
        best = None
        best_key: tuple[bool, float, int, int] | None = None
        for v in views:
            ok, marginal = self.cost(v, input_tokens)
            key = (not ok, marginal if ok else 0.0, v.num_requests, v.index)
            if best_key is None or key < best_key:
                best, best_key = v, key
        assert best is not None
        return best.index
