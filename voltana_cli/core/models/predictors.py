"""Latency predictors the controller and router consult (EcoPred's role).

Until predictors are fitted from profiles (``voltana tune``), the controller predicts from the analytical
performance model with a configurable, deterministic prediction error: each (phase, clock) gets a fixed
relative bias drawn from the run's generator in ``[-error, +error]``. The simulator's "real" GPU adds its
own per-iteration noise on top of the model, which the predictor never sees.
"""

from __future__ import annotations

import numpy as np

from voltana_cli.core.models.analytical import PerfModel


class ModelPredictor:
    """A ``policy.Predictor``. Predicts from a performance model, scaled by a fixed per-(phase, clock) error.

    It predicts energy too (``decode_j``, ``prefill_j``), with the same error as the phase's latency at that
    clock (a model that misjudges the time of an iteration misjudges its energy alike).

    Args:
        model: the performance model (not the simulator's noisy ground truth).
        error: maximum relative error, e.g. ``0.05`` for ±5 %.
        rng: draws the biases once; ``None`` gives an exact predictor (error must then be 0).
        clocks: the clocks the policy may ask about (tables are built eagerly for them).
    """

    def __init__(self, model: PerfModel, error: float, rng: np.random.Generator | None, clocks: list[int]):
        if error < 0:
            raise ValueError("prediction error must be >= 0")
        self._model = model
        self._dec: dict[int, tuple[list[float], float, int]] = {}
        self._pre: dict[int, tuple[list[float], float, float, float]] = {}
        self._dec_j: dict[int, tuple[list[float], float]] = {}
        self._pre_j: dict[int, tuple[list[float], float, float, float]] = {}
        for c in clocks:
            bd = 1.0 + (rng.uniform(-error, error) if rng is not None and error > 0 else 0.0)
            bp = 1.0 + (rng.uniform(-error, error) if rng is not None and error > 0 else 0.0)
            dt = model.decode_table(c)
            pt = model.prefill_table(c)
            self._dec[c] = ([x * bd for x in dt.t0], dt.t_kv * bd, len(dt.t0))  # the table, t_kv, its length
            self._pre[c] = ([x * bp for x in pt.tg], pt.t_seq * bp, pt.t_pair * bp, bp)
            self._dec_j[c] = ([x * bd for x in dt.e0], dt.e_kv * bd)
            self._pre_j[c] = ([x * bp for x in pt.eg], pt.e_seq * bp, pt.e_pair * bp, bp)

    #: Both phases have an energy model (the feedback controller and the predictive router price with it).
    has_energy = True

    def decode_s(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        t0, tkv, n = self._dec[clock_mhz]
        if batch >= n:
            batch = n - 1
        return t0[batch] + kv_tokens * tkv

    def prefill_s(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        tg, tseq, tpair, b = self._pre[clock_mhz]
        c = tokens / max(num_seqs, 1)
        pairs = num_seqs * c * (c + 1) / 2
        if tokens < len(tg):
            base = tg[tokens]
        else:
            base = self._model.prefill_cost(tokens, clock_mhz, 1, 0.0)[0] * b
        return base + num_seqs * tseq + pairs * tpair

    def idle_w(self, clock_mhz: int) -> float:
        """Predicted power (W) of the instance idle at ``clock_mhz`` (the model's, without error: idle power is
        one reading per clock, which a profile measures directly)."""
        return self._model.idle_power_w(clock_mhz)

    def decode_j(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        """Predicted energy (J) of a decode iteration, as ``decode_s`` predicts its time."""
        e0, ekv = self._dec_j[clock_mhz]
        if batch >= len(e0):
            batch = len(e0) - 1
        return e0[batch] + kv_tokens * ekv

    def prefill_j(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        """Predicted energy (J) of a prefill iteration, as ``prefill_s`` predicts its time."""
        eg, eseq, epair, b = self._pre_j[clock_mhz]
        c = tokens / max(num_seqs, 1)
        pairs = num_seqs * c * (c + 1) / 2
        base = eg[tokens] if tokens < len(eg) else self._model.prefill_cost(tokens, clock_mhz, 1, 0.0)[1] * b
        return base + num_seqs * eseq + pairs * epair
