"""The oracle: a yardstick, not a policy anyone can run.

Per iteration it takes the lowest clock whose *true* latency, the world's ground truth for that very
iteration with its noise draw included, meets the SLO budget (decode: the ITL SLO; prefill: the TTFT SLO
less the batch's oldest wait, and the work queued behind the batch, at the batch's true pace, within the
TTFT SLO less the oldest queued request's wait). It is the only controller that reads ``Observation.truth_s``; a world that
cannot supply the truth (a live cluster) cannot run it, and every report flags its rows as a yardstick.
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
    """

    #: Tells a world to fill ``Observation.truth_s`` for this controller (and for no other).
    reads_truth = True

    def __init__(self, phase: str, clocks_mhz: tuple[int, ...] | list[int], slo_s: float, idle_timeout_s: float = 5.0):
        if phase not in ("prefill", "decode"):
            raise ValueError(f"phase must be prefill or decode, not {phase!r}")
        self.phase = phase
        self.levels = sorted(set(clocks_mhz))
        self.slo_s = slo_s
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
