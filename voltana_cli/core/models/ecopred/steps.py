"""Decode step detection: latency jumps between neighbouring sampled batch sizes.

Segments come from the profile, not from a hard-coded 128: the detector finds jumps between ``b`` and
``b + 1`` that are far above the measurement noise and the local slope; each detected step is a mandatory
segment cut (``segments.segment``) and a free jump in the fit (``fit.fit_phase``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: A detected step must exceed this many standard errors of the jump ...
STEP_Z = 4.0
#: ... and this fraction of the latency below it.
STEP_MIN_REL = 0.025


@dataclass(frozen=True)
class Step:
    """A latency step between decode batch sizes ``after`` and ``after + 1``."""

    after: int
    jump_ms: float  # mean over clocks of the excess over the local slope
    rel: float  # mean over clocks of the excess relative to the latency at ``after``
    clocks_seen: int  # clocks where the excess was positive
    clocks_total: int


def kv_free_latency(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Latency at zero KV per batch size, from the decode rows of one clock.

    Least squares with one intercept per batch size and a KV slope shared by all of them.

    Args:
        df: decode rows of one clock.

    Returns:
        (sorted batch sizes, latency at zero KV in ms, its standard error, the KV slope).
    """
    bs = np.sort(df["batch_size"].unique())
    idx = np.searchsorted(bs, df["batch_size"].to_numpy())
    n = len(df)
    x = np.zeros((n, len(bs) + 1))
    x[np.arange(n), idx] = 1.0
    x[:, -1] = df["num_tokens"].to_numpy(dtype=float)
    y = df["latency_ms"].to_numpy(dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    # Relative noise, pooled (noise is multiplicative): SE of each intercept from its own row count.
    rel = resid / np.maximum(x @ coef, 1e-12)
    dof = max(n - len(bs) - 1, 1)
    sigma_rel = float(np.sqrt((rel @ rel) / dof))
    counts = np.bincount(idx, minlength=len(bs)).astype(float)
    h = coef[:-1]
    se = np.abs(h) * sigma_rel / np.sqrt(np.maximum(counts, 1.0))
    return bs, h, se, float(coef[-1])


def _excesses(decode: pd.DataFrame) -> dict[int, list[tuple[int, float, float, float]]]:
    """Per ``b`` with ``b + 1`` also sampled: per clock (clock, excess ms, excess / latency, z of the excess)."""
    seen: dict[int, list[tuple[int, float, float, float]]] = {}
    for clock in sorted(decode["clock_mhz"].unique()):
        bs, h, se, _ = kv_free_latency(decode[decode["clock_mhz"] == clock])
        for i, b in enumerate(bs[:-1]):
            if bs[i + 1] != b + 1:
                continue
            # The jump expected from the local slope (the steeper neighbour would hide a step; take the gentler).
            slopes = []
            if i > 0:
                slopes.append((h[i] - h[i - 1]) / (b - bs[i - 1]))
            if i + 2 < len(bs):
                slopes.append((h[i + 2] - h[i + 1]) / (bs[i + 2] - b - 1))
            expected = max(0.0, min(slopes)) if slopes else 0.0
            excess = float(h[i + 1] - h[i] - expected)
            se_j = max(math.hypot(se[i], se[i + 1]), 1e-12)
            seen.setdefault(int(b), []).append((int(clock), excess, excess / h[i], excess / se_j))
    return seen


def detect_steps(decode: pd.DataFrame) -> list[Step]:
    """Steps in decode latency versus batch size, seen at neighbouring sampled batch sizes.

    At each clock, the jump from ``b`` to ``b + 1`` less the local slope is an excess with a standard error;
    the evidence is pooled over clocks (Stouffer: sum of z / sqrt(clocks)), so a step too small to stand
    out at one clock is still found when every clock shows it. A step must also be at least
    ``STEP_MIN_REL`` of the latency, so CUDA-graph padding ripples of ~1 % are not reported as steps.

    Args:
        decode: decode rows of a profile, all clocks.

    Returns:
        The steps, by ascending batch size.
    """
    steps = []
    for b, per in sorted(_excesses(decode).items()):
        z = sum(p[3] for p in per) / math.sqrt(len(per))
        rel = float(np.mean([p[2] for p in per]))
        if z > STEP_Z and rel > STEP_MIN_REL:
            jump = float(np.mean([p[1] for p in per]))
            n_pos = sum(1 for p in per if p[1] > 0)
            steps.append(Step(b, round(jump, 4), round(rel, 4), n_pos, len(per)))
    return steps
