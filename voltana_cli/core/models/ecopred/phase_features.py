"""The features EcoPred fits per phase, and the column each phase is segmented along.

- decode: ``batch_size``, ``kv_tokens`` (a profile's ``num_tokens`` of a decode row is its KV tokens);
- prefill: ``tokens``, ``seqs`` and ``pairs``, the causal attention work of the batch
  (``analytical.prefill_pairs``): the paper's tokens-only line plus the terms it misses on short and
  multi-sequence batches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from voltana_cli.core.models.analytical import prefill_pairs

#: Feature names per phase, in design-matrix order (the YAML form lists them after ``intercept``).
PHASE_FEATURES = {"decode": ("batch_size", "kv_tokens"), "prefill": ("tokens", "seqs", "pairs")}


def features(phase: str, df: pd.DataFrame) -> np.ndarray:
    """Design matrix of a phase's profile rows.

    Args:
        phase: ``"decode"`` or ``"prefill"``.
        df: profile rows of that phase (``batch_size``, ``num_tokens``).

    Returns:
        rows x features, in the order of ``PHASE_FEATURES[phase]``.
    """
    b = df["batch_size"].to_numpy(dtype=float)
    t = df["num_tokens"].to_numpy(dtype=float)
    if phase == "decode":
        return np.column_stack([b, t])
    return np.column_stack([t, b, prefill_pairs(t, b)])


def segment_key(phase: str) -> str:
    """The profile column along which a phase is segmented (decode: batch size; prefill: batch tokens)."""
    return "batch_size" if phase == "decode" else "num_tokens"
