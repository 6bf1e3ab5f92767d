"""Segmentation along a phase's key column (decode: batch size), common to all clocks.

Detected steps are mandatory cuts; segments are then split further, at sampled points, only where a single
line misfits the configuration means by more than the measurement noise explains.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import pandas as pd

from voltana_cli.core.models.ecopred.phase_features import features, segment_key

#: Segments are split while their relative RMS misfit exceeds max(SPLIT_NOISE x the noise of a
#: configuration's mean, SPLIT_FLOOR).
SPLIT_NOISE = 1.5
SPLIT_FLOOR = 0.005


def _config_means(df: pd.DataFrame, target: str) -> pd.DataFrame:
    g = df.groupby(["clock_mhz", "batch_size", "num_tokens"], sort=True)[target]
    return g.agg(["mean", "count", "std"]).reset_index()


def _lsq_rel_rms(x: np.ndarray, y: np.ndarray) -> float:
    a = np.column_stack([np.ones(len(x)), x])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    r = (y - a @ coef) / np.maximum(np.abs(y), 1e-12)
    return float(np.sqrt(np.mean(r * r)))


def _split_tolerance(means: pd.DataFrame) -> float:
    """The misfit a segment may keep: the noise of a configuration mean, relative, pooled over repeats."""
    rep = means[means["count"] > 1]
    if len(rep):
        noise_rel = float(np.sqrt(np.mean((rep["std"] / rep["mean"]) ** 2 / rep["count"])))
    else:
        noise_rel = 0.0
    return max(SPLIT_NOISE * noise_rel, SPLIT_FLOOR)


def _pieces(xs: np.ndarray, cuts: list[int]) -> list[list[int]]:
    """The sampled key values, cut after every value in ``cuts``."""
    pieces: list[list[int]] = []
    cur: list[int] = []
    cutset = set(cuts)
    for x in xs:
        cur.append(int(x))
        if int(x) in cutset:
            pieces.append(cur)
            cur = []
    if cur:
        pieces.append(cur)
    return pieces


def segment(phase: str, df: pd.DataFrame, cuts: list[int], min_points: int = 2) -> list[int]:
    """Lower edges of segments along the phase's key column, common to all clocks.

    A segment is split at a sampled value while a line fits its configuration means (at the worst clock)
    worse than the noise explains; each side keeps at least ``min_points`` sampled values.

    Args:
        phase: ``"decode"`` or ``"prefill"``.
        df: that phase's profile rows, all clocks.
        cuts: values ``v`` such that ``v`` and ``v + 1`` must be in different segments (detected steps).
        min_points: fewest sampled key values in a segment made by a split.

    Returns:
        The lowest key of each segment, ascending (the last segment is open above).
    """
    key = segment_key(phase)
    means = _config_means(df, "latency_ms")
    tol = _split_tolerance(means)
    groups = {int(cast(int, c)): g for c, g in means.groupby("clock_mhz")}

    def misfit(lo: int, hi: int) -> float:
        worst = 0.0
        for g in groups.values():
            sel = g[(g[key] >= lo) & (g[key] <= hi)]
            if len(sel) <= 2:
                continue
            fx = features(phase, sel.rename(columns={"mean": "latency_ms"}))
            worst = max(worst, _lsq_rel_rms(fx, sel["mean"].to_numpy(dtype=float)))
        return worst

    def split(vals: list[int]) -> list[list[int]]:
        if len(vals) < 2 * min_points or misfit(vals[0], vals[-1]) <= tol:
            return [vals]
        best, best_k = math.inf, -1
        for k in range(min_points, len(vals) - min_points + 1):
            err = max(misfit(vals[0], vals[k - 1]), misfit(vals[k], vals[-1]))
            if err < best:
                best, best_k = err, k
        return split(vals[:best_k]) + split(vals[best_k:])

    edges: list[int] = []
    for p in _pieces(np.sort(means[key].unique()), cuts):
        for s in split(p):
            edges.append(s[0])
    return edges
