"""The per-clock constrained fit of one phase.

Not the paper's per-bucket RANSAC around ``LinearRegression(positive=True)``, whose independent fits go
wild when a thin bucket loses a batch size: each clock is one joint fit, continuous and piecewise linear
along the segment key with free jumps only at detected steps, by bounded least squares on relative
residuals (physical coefficients >= 0) with robust trimming of far-off rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.ecopred.phase_features import features, segment_key

#: Rows whose relative residual exceeds this many robust standard deviations are dropped and the fit is
#: redone (twice): a robust fit in the spirit of the paper's RANSAC, but deterministic.
TRIM_Z = 4.0


@dataclass
class PhaseModel:
    """One phase's fitted segments: ``edges[i]`` is the lowest key of segment i (the last one is open)."""

    phase: str
    edges: list[int]
    latency_ms: dict[int, list[list[float]]]  # clock -> per segment [b, coef...]
    energy_j: dict[int, list[list[float]]] | None = None


def _knots(xk: np.ndarray, inner: list[int], jumps: list[int]) -> list[int]:
    """The inner edges where this clock's slope may bend.

    Only where this clock has data that pins the new slope (after a step: two key values inside the
    segment; elsewhere: one beyond the edge, up to the next edge). Otherwise the slope carries on from
    below, and a jump, if the edge is a step, still sets the level."""
    ends = inner[1:] + [math.inf]
    knots = []
    for e, hi in zip(inner, ends, strict=True):
        if e in jumps:  # level and slope both free: two distinct values inside the segment
            ok = len(np.unique(xk[(xk >= e) & (xk < hi)])) >= 2
        else:
            upto = (xk < hi) if hi in jumps or hi == math.inf else (xk <= hi)
            ok = bool(np.any((xk > e) & upto))
        if ok:
            knots.append(e)
    return knots


def _robust_bvls(x: np.ndarray, y: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Bounded least squares on relative residuals, trimming rows beyond ``TRIM_Z`` robust SDs (twice at most)."""
    # Imported here: scipy is slow to import and only fitting needs it, not the predictor's users.
    from scipy.optimize import lsq_linear  # noqa: PLC0415

    keep = np.ones(len(y), dtype=bool)
    for _ in range(3):
        w = 1.0 / y[keep]
        sol = lsq_linear(x[keep] * w[:, None], y[keep] * w, bounds=(lower, np.full(len(lower), np.inf)), method="bvls")
        coef = sol.x
        rel = (x @ coef - y) / y
        scale = 1.4826 * float(np.median(np.abs(rel[keep] - np.median(rel[keep])))) or 1e-12
        new_keep = np.abs(rel) <= TRIM_Z * max(scale, 1e-4)
        if new_keep.sum() < len(lower) or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return cast(np.ndarray, coef)


def _fit_clock(phase: str, g: pd.DataFrame, target: str, edges: list[int], steps: set[int]) -> list[list[float]]:
    """Per-segment lines ``[b, a, others...]`` for one clock, fitted jointly.

    The model is continuous and piecewise linear in the key (hinges at the segment edges) with a jump at
    each detected step, plus the other features (decode: KV tokens; prefill: sequences, attention pairs)
    shared by all segments. Bounds keep the physics: base slope, jumps and the other coefficients are
    >= 0 (a hinge may bend the line either way). Residuals are relative (MAPE is what matters), and rows
    far off the fit are trimmed robustly before the final fit."""
    key = segment_key(phase)
    y = g[target].to_numpy(dtype=float)
    ok = np.isfinite(y) & (y > 0)
    g, y = g[ok], y[ok]
    if g.empty:
        return [[] for _ in edges]
    xk = g[key].to_numpy(dtype=float)
    other = features(phase, g)[:, 1:]
    inner = [e for e in edges[1:] if xk.min() < e <= xk.max()]
    jumps = [e for e in inner if e - 1 in steps]
    knots = _knots(xk, inner, jumps)
    cols = [np.ones_like(xk), xk] + [np.maximum(0.0, xk - k) for k in knots] + [(xk >= e).astype(float) for e in jumps]
    x = np.column_stack(cols + [other[:, j] for j in range(other.shape[1])])
    n_h, n_j, n_o = len(knots), len(jumps), other.shape[1]
    lower = np.array([-np.inf, 0.0] + [-np.inf] * n_h + [0.0] * n_j + [0.0] * n_o)
    if g[key].nunique() < 2:  # a single key value: no slope along it can be identified
        x[:, 1] = 0.0
    coef = _robust_bvls(x, y, lower)
    b, a = coef[0], coef[1]
    d = dict(zip(knots, coef[2:2 + n_h], strict=True))
    j = dict(zip(jumps, coef[2 + n_h:2 + n_h + n_j], strict=True))
    oth = [float(v) for v in coef[2 + n_h + n_j:]]
    # Back from hinge form to one line per segment: slope and intercept accumulate every hinge and jump below.
    segs = []
    for e in edges:
        slope = a + sum(dk for k, dk in d.items() if k <= e)
        icpt = b - sum(dk * k for k, dk in d.items() if k <= e) + sum(jv for k, jv in j.items() if k <= e)
        segs.append([float(icpt), float(slope), *oth])
    return segs


def fit_phase(phase: str, df: pd.DataFrame, edges: list[int], steps: set[int], with_energy: bool) -> PhaseModel:
    """Fit one phase's segments at every clock of ``df``.

    Args:
        phase: ``"decode"`` or ``"prefill"``.
        df: that phase's profile rows, all clocks.
        edges: lower edges of the segments (``segments.segment``), common to all clocks.
        steps: batch sizes ``b`` with a step to ``b + 1`` (a free jump at edge ``b + 1``).
        with_energy: also fit ``energy_j`` (the profile has energy readings).

    Returns:
        The phase's lines per clock; a segment a clock has no usable rows in borrows its nearest fitted one.

    Raises:
        UserError: a clock has no usable rows in any segment.
    """
    targets: dict[str, dict[int, list[list[float]]] | None] = {"latency_ms": {}, "energy_j": {} if with_energy else None}
    for clock, g in df.groupby("clock_mhz", sort=True):
        for target, table in targets.items():
            if table is not None:
                table[int(cast(int, clock))] = _fit_clock(phase, g, target, edges, steps)
    for table in targets.values():
        if table is not None:
            for segs in table.values():
                _fill_gaps(segs)
    return PhaseModel(phase, list(edges), targets["latency_ms"] or {}, targets["energy_j"])


def _fill_gaps(segs: list[list[float]]) -> None:
    known = [i for i, s in enumerate(segs) if s]
    if not known:
        raise UserError("a clock has no usable rows in any segment; check the profile")
    for i, s in enumerate(segs):
        if not s:
            j = min(known, key=lambda k: abs(k - i))
            segs[i] = list(segs[j])
