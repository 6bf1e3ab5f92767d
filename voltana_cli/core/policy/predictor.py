"""What policies know about the hardware: predictions, never the ground truth.

A ``Predictor`` answers "how long would this iteration take at that clock". EcoPred fitted from a profile
(``models.ecopred``) and the analytical model with a prediction error (``models.ModelPredictor``) both
satisfy it structurally; policies see nothing else of the models.
"""

from __future__ import annotations

from typing import Protocol


class Predictor(Protocol):
    """Predicted iteration latency (seconds) of one instance at a clock."""

    def decode_s(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        """Latency of a decode iteration of ``batch`` requests holding ``kv_tokens`` KV tokens."""
        ...

    def prefill_s(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        """Latency of a prefill iteration of ``tokens`` tokens from ``num_seqs`` sequences."""
        ...
