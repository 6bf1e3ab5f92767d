"""The oracle: a yardstick, not a policy anyone can run.

Per iteration it takes the lowest clock whose *true* latency, the world's ground truth for that very
iteration with its noise draw included, meets the SLO budget (decode: the ITL SLO; prefill: the TTFT SLO
less the batch's oldest wait, and the work queued behind the batch, at the batch's true pace, within the
TTFT SLO less the oldest queued request's wait). It is the only controller that reads ``Observation.truth_s``; a world that
cannot supply the truth (a live cluster) cannot run it, and every report flags its rows as a yardstick.

The budget is the SLO less a ``margin`` (``oracle:<margin>``, a share of the SLO). Greedy per iteration, the
oracle cannot see the arrivals to come: with no margin it misses the rate's requirement under load (A100 x
Llama-3.1-8B, 2P2D: 94 % joint attainment at 70 req/s, 85 % at 80, against 98 and 97 % asked), and its energy
there is no yardstick for a policy that must meet it. The bare name ``oracle`` is therefore searched, like
static-best: the least margin whose run meets the rate's requirement (``tune.static_best.find_oracle``).
"""

from __future__ import annotations

from voltana_cli.core.policy.controller import Observation


class OracleController:
    """The lowest clock whose true latency meets the budget; the top clock when none does.

    Args:
        phase: ``"prefill"`` or ``"decode"``.
        clocks_mhz: the clocks it may choose (ascending after sorting).
        slo_s: TTFT SLO for prefill, ITL SLO for decode.
        idle_timeout_s: idle time after which the instance drops to its lowest clock.
        margin: the budget is ``slo_s * (1 - margin)``.
    """

    #: Tells a world to fill ``Observation.truth_s`` for this controller (and for no other).
    reads_truth = True

    def __init__(self, phase: str, clocks_mhz: tuple[int, ...] | list[int], slo_s: float, idle_timeout_s: float = 5.0,
                 margin: float = 0.0):
        if phase not in ("prefill", "decode"):
            raise ValueError(f"phase must be prefill or decode, not {phase!r}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"oracle margin {margin} must be in [0, 1)")
        self.phase = phase
        self.levels = sorted(set(clocks_mhz))
        self.slo_s = slo_s * (1.0 - margin)
        self.idle_timeout_s = idle_timeout_s
        self.idle_clock_mhz = self.levels[0]

    def decide(self, obs: Observation) -> int:
        truth = obs.truth_s
        if truth is None:
            raise RuntimeError("the oracle needs the world's ground truth, which this world does not give")
        if self.phase == "decode":
            for c in self.levels:
                if truth(c) <= self.slo_s:
                    return c
            return self.levels[-1]
        # Prefill: this batch in time for its oldest request, and the work queued behind it in time for the
        # oldest of that, at this batch's true per-token pace.
        ahead = 1.0 + obs.queued_tokens / max(obs.num_tokens, 1)
        for c in self.levels:
            t = truth(c)
            if t <= self.slo_s - obs.oldest_wait_s and t * ahead <= self.slo_s - obs.queued_oldest_wait_s:
                return c
        return self.levels[-1]

    def on_idle_timeout(self) -> None:
        """Nothing to forget: every decision reads the truth afresh."""
