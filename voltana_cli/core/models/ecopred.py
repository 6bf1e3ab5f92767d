"""EcoPred: interpretable latency and energy predictors fitted from a profile (PAPER.md §5, generalised).

Shape (the paper's):
- decode, per clock and batch-size segment: ``t = b + a * batch_size + c * kv_tokens``;
- prefill, per clock and batch-token segment: ``t = b + a * tokens + s * seqs + q * pairs`` where ``pairs`` is
  the causal attention work of the batch (the paper's tokens-only line plus the terms it misses on short
  and multi-sequence batches);
- energy (J) with the same segments.

Fitting (not the paper's per-bucket RANSAC around ``LinearRegression(positive=True)``, whose independent
fits go wild when a thin bucket loses a batch size): each clock is one joint fit, continuous and
piecewise linear along the segment key with free jumps only at detected steps, by bounded least squares
on relative residuals (physical coefficients >= 0) with robust trimming of far-off rows.

Beyond the paper:
- **Segments come from the profile, not from a hard-coded 128.** The decode step detector finds jumps
  between neighbouring sampled batch sizes (``b`` and ``b + 1``) that are far above the measurement noise
  and the local slope; each detected step is a mandatory segment cut. Segments are then split further, at
  sampled points, only where a single line misfits the data by more than the noise explains. Prefill has a
  knot at every profiled token count.
- **Clocks between profiled ones are interpolated** linearly in the period 1/f (latency is close to
  ``α + β / f``); outside the profiled range the predictor refuses rather than guessing.
- **Accuracy is measured on held-out configurations** (all repeats of a held-out configuration are left out,
  so repeats never leak), then the predictor is refitted on every row.

A fitted predictor is a plain object with microsecond calls and a YAML form with a versioned schema.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from voltana_cli import __version__
from voltana_cli.core.errors import UserError
from voltana_cli.core.models.analytical import prefill_pairs
from voltana_cli.core.profiling.format import Profile

SCHEMA = "voltana.ecopred/1"
PHASE_FEATURES = {"decode": ("batch_size", "kv_tokens"), "prefill": ("tokens", "seqs", "pairs")}
#: A detected step must exceed this many standard errors of the jump ...
STEP_Z = 4.0
#: ... and this fraction of the latency below it.
STEP_MIN_REL = 0.025
#: Segments are split while their relative RMS misfit exceeds max(SPLIT_NOISE x the noise of a
#: configuration's mean, SPLIT_FLOOR).
SPLIT_NOISE = 1.5
SPLIT_FLOOR = 0.005


# ---- features -------------------------------------------------------------------------------------------
def features(phase: str, df: pd.DataFrame) -> np.ndarray:
    """Design matrix (rows x features) of a phase's rows."""
    b = df["batch_size"].to_numpy(dtype=float)
    t = df["num_tokens"].to_numpy(dtype=float)
    if phase == "decode":
        return np.column_stack([b, t])
    return np.column_stack([t, b, prefill_pairs(t, b)])


def _x_key(phase: str) -> str:
    """The column along which a phase is segmented."""
    return "batch_size" if phase == "decode" else "num_tokens"


# ---- step detection ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """A latency step between decode batch sizes ``after`` and ``after + 1``."""

    after: int
    jump_ms: float  # mean over clocks of the excess over the local slope
    rel: float  # mean over clocks of the excess relative to the latency at ``after``
    clocks_seen: int  # clocks where the excess was positive
    clocks_total: int


def kv_free_latency(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Decode rows of one clock -> (batch sizes, latency at zero KV (ms), its standard error, KV slope).

    Least squares with one intercept per batch size and a KV slope shared by all of them."""
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


def detect_steps(decode: pd.DataFrame) -> list[Step]:
    """Steps in decode latency versus batch size, seen at neighbouring sampled batch sizes.

    At each clock, the jump from ``b`` to ``b + 1`` less the local slope is an excess with a standard error;
    the evidence is pooled over clocks (Stouffer: sum of z / sqrt(clocks)), so a step too small to stand
    out at one clock is still found when every clock shows it. A step must also be at least
    ``STEP_MIN_REL`` of the latency, so CUDA-graph padding ripples of ~1 % are not reported as steps."""
    clocks = sorted(decode["clock_mhz"].unique())
    seen: dict[int, list[tuple[int, float, float, float]]] = {}
    for clock in clocks:
        bs, h, se, _ = kv_free_latency(decode[decode["clock_mhz"] == clock])
        for i, b in enumerate(bs[:-1]):
            if bs[i + 1] != b + 1:
                continue
            slopes = []
            if i > 0:
                slopes.append((h[i] - h[i - 1]) / (b - bs[i - 1]))
            if i + 2 < len(bs):
                slopes.append((h[i + 2] - h[i + 1]) / (bs[i + 2] - b - 1))
            expected = max(0.0, min(slopes)) if slopes else 0.0
            excess = float(h[i + 1] - h[i] - expected)
            se_j = max(math.hypot(se[i], se[i + 1]), 1e-12)
            seen.setdefault(int(b), []).append((int(clock), excess, excess / h[i], excess / se_j))
    steps = []
    for b, per in sorted(seen.items()):
        z = sum(p[3] for p in per) / math.sqrt(len(per))
        rel = float(np.mean([p[2] for p in per]))
        if z > STEP_Z and rel > STEP_MIN_REL:
            jump = float(np.mean([p[1] for p in per]))
            n_pos = sum(1 for p in per if p[1] > 0)
            steps.append(Step(b, round(jump, 4), round(rel, 4), n_pos, len(per)))
    return steps


# ---- segmentation ---------------------------------------------------------------------------------------
def _config_means(df: pd.DataFrame, target: str) -> pd.DataFrame:
    g = df.groupby(["clock_mhz", "batch_size", "num_tokens"], sort=True)[target]
    return g.agg(["mean", "count", "std"]).reset_index()


def _lsq_rel_rms(x: np.ndarray, y: np.ndarray) -> float:
    a = np.column_stack([np.ones(len(x)), x])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    r = (y - a @ coef) / np.maximum(np.abs(y), 1e-12)
    return float(np.sqrt(np.mean(r * r)))


def segment(phase: str, df: pd.DataFrame, cuts: list[int], min_points: int = 2) -> list[int]:
    """Lower edges of segments along the phase's key column, common to all clocks.

    ``cuts``: values ``v`` such that ``v`` and ``v + 1`` must be in different segments. A segment is split
    at a sampled value while a line fits its configuration means worse than the noise explains."""
    key = _x_key(phase)
    means = _config_means(df, "latency_ms")
    # Noise of a configuration mean, relative, pooled over configurations with repeats.
    rep = means[means["count"] > 1]
    if len(rep):
        noise_rel = float(np.sqrt(np.mean((rep["std"] / rep["mean"]) ** 2 / rep["count"])))
    else:
        noise_rel = 0.0
    tol = max(SPLIT_NOISE * noise_rel, SPLIT_FLOOR)
    xs = np.sort(means[key].unique())
    groups = {int(c): g for c, g in means.groupby("clock_mhz")}

    def misfit(lo: int, hi: int) -> float:
        worst = 0.0
        for g in groups.values():
            sel = g[(g[key] >= lo) & (g[key] <= hi)]
            if len(sel) <= 2:
                continue
            fx = features(phase, sel.rename(columns={"mean": "latency_ms"}))
            worst = max(worst, _lsq_rel_rms(fx, sel["mean"].to_numpy(dtype=float)))
        return worst

    # Mandatory pieces from the cuts.
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
    for p in pieces:
        for s in split(p):
            edges.append(s[0])
    return edges


# ---- fitting ----------------------------------------------------------------------------------------------
@dataclass
class PhaseModel:
    """One phase's fitted segments: ``edges[i]`` is the lowest key of segment i (the last one is open)."""

    phase: str
    edges: list[int]
    latency_ms: dict[int, list[list[float]]]  # clock -> per segment [b, coef...]
    energy_j: dict[int, list[list[float]]] | None = None


#: Rows whose relative residual exceeds this many robust standard deviations are dropped and the fit is
#: redone (twice): a robust fit in the spirit of the paper's RANSAC, but deterministic.
TRIM_Z = 4.0


def _fit_clock(phase: str, g: pd.DataFrame, target: str, edges: list[int], steps: set[int]) -> list[list[float]]:
    """Per-segment lines ``[b, a, others...]`` for one clock, fitted jointly.

    The model is continuous and piecewise linear in the key (hinges at the segment edges) with a jump at
    each detected step, plus the other features (decode: KV tokens; prefill: sequences, attention pairs)
    shared by all segments. Bounds keep the physics: base slope, jumps and the other coefficients are
    >= 0 (a hinge may bend the line either way). Residuals are relative (MAPE is what matters), and rows
    far off the fit are trimmed robustly before the final fit."""
    from scipy.optimize import lsq_linear  # noqa: PLC0415

    key = _x_key(phase)
    y = g[target].to_numpy(dtype=float)
    ok = np.isfinite(y) & (y > 0)
    g, y = g[ok], y[ok]
    if g.empty:
        return [[] for _ in edges]
    xk = g[key].to_numpy(dtype=float)
    other = features(phase, g)[:, 1:]
    inner = [e for e in edges[1:] if xk.min() < e <= xk.max()]
    jumps = [e for e in inner if e - 1 in steps]
    # The slope may bend at an edge only where this clock has data that pins the new slope (after a step:
    # two key values inside the segment; elsewhere: one beyond the edge, up to the next edge). Otherwise
    # the slope carries on from below, and a jump, if the edge is a step, still sets the level.
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
    cols = [np.ones_like(xk), xk] + [np.maximum(0.0, xk - k) for k in knots] + [(xk >= e).astype(float) for e in jumps]
    x = np.column_stack(cols + [other[:, j] for j in range(other.shape[1])])
    n_h, n_j, n_o = len(knots), len(jumps), other.shape[1]
    lower = np.array([-np.inf, 0.0] + [-np.inf] * n_h + [0.0] * n_j + [0.0] * n_o)
    if g[key].nunique() < 2:  # a single key value: no slope along it can be identified
        x[:, 1] = 0.0
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
    b, a = coef[0], coef[1]
    d = dict(zip(knots, coef[2:2 + n_h], strict=True))
    j = dict(zip(jumps, coef[2 + n_h:2 + n_h + n_j], strict=True))
    oth = [float(v) for v in coef[2 + n_h + n_j:]]
    segs = []
    for e in edges:
        slope = a + sum(dk for k, dk in d.items() if k <= e)
        icpt = b - sum(dk * k for k, dk in d.items() if k <= e) + sum(jv for k, jv in j.items() if k <= e)
        segs.append([float(icpt), float(slope), *oth])
    return segs


def fit_phase(phase: str, df: pd.DataFrame, edges: list[int], steps: set[int], with_energy: bool) -> PhaseModel:
    targets: dict[str, dict[int, list[list[float]]] | None] = {"latency_ms": {}, "energy_j": {} if with_energy else None}
    for clock, g in df.groupby("clock_mhz", sort=True):
        for target, table in targets.items():
            if table is not None:
                table[int(clock)] = _fit_clock(phase, g, target, edges, steps)
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


# ---- the predictor -----------------------------------------------------------------------------------------
class EcoPred:
    """Fitted predictors: ``decode_s``/``prefill_s`` (seconds) and ``decode_j``/``prefill_j`` (joules).

    Calls for a clock between profiled clocks interpolate (linearly in 1/f) on first use and cache."""

    def __init__(self, decode: PhaseModel, prefill: PhaseModel, info: dict[str, Any] | None = None):
        self.decode = decode
        self.prefill = prefill
        self.info = info or {}
        self.clocks_mhz = sorted(set(decode.latency_ms) & set(prefill.latency_ms))
        if not self.clocks_mhz:
            raise UserError("the profile has no clock with both prefill and decode rows: profile both phases")
        self._dec: dict[int, tuple] = {}
        self._pre: dict[int, tuple] = {}
        self._dec_j: dict[int, tuple] = {}
        self._pre_j: dict[int, tuple] = {}

    @property
    def has_energy(self) -> bool:
        return self.decode.energy_j is not None and self.prefill.energy_j is not None

    def _weights(self, clock: int) -> list[tuple[int, float]]:
        cl = self.clocks_mhz
        if clock in cl:
            return [(clock, 1.0)]
        if clock < cl[0] or clock > cl[-1]:
            raise UserError(
                f"the predictor was fitted on clocks {cl[0]}-{cl[-1]} MHz and cannot extrapolate to {clock} MHz: "
                "profile that clock, or choose EcoFreq levels inside the profiled range"
            )
        k = bisect.bisect_left(cl, clock)
        lo, hi = cl[k - 1], cl[k]
        w = (1 / clock - 1 / hi) / (1 / lo - 1 / hi)
        return [(lo, w), (hi, 1.0 - w)]

    def _coefs(self, table: dict[int, list[list[float]]], clock: int, scale: float) -> tuple[list[float], ...]:
        parts = self._weights(clock)
        nseg = len(next(iter(table.values())))
        width = len(next(iter(table.values()))[0])
        cols: list[list[float]] = [[0.0] * nseg for _ in range(width)]
        for c, w in parts:
            for i, seg in enumerate(table[c]):
                for j in range(width):
                    cols[j][i] += w * seg[j] * scale
        return tuple(cols)

    def _table(self, cache: dict[int, tuple], pm: PhaseModel, energy: bool, clock: int) -> tuple:
        t = cache.get(clock)
        if t is None:
            src = pm.energy_j if energy else pm.latency_ms
            if src is None:
                raise UserError("this predictor has no energy model: the profile had no energy readings")
            t = cache[clock] = (pm.edges, *self._coefs(src, clock, 1.0 if energy else 1e-3))
        return t

    def lines(self, phase: str, energy: bool, clock_mhz: int) -> tuple:
        """One phase's per-segment lines at a clock: ``(edges, b, a, others...)`` in seconds (or joules)."""
        if phase == "decode":
            return self._table(self._dec_j if energy else self._dec, self.decode, energy, clock_mhz)
        return self._table(self._pre_j if energy else self._pre, self.prefill, energy, clock_mhz)

    def prepare(self, clocks: list[int]) -> None:
        """Build the tables for ``clocks`` now (and fail now if one is out of range)."""
        for c in clocks:
            self._table(self._dec, self.decode, False, c)
            self._table(self._pre, self.prefill, False, c)

    def decode_s(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        t = self._dec.get(clock_mhz) or self._table(self._dec, self.decode, False, clock_mhz)
        i = bisect.bisect_right(t[0], batch) - 1
        if i < 0:
            i = 0
        return t[1][i] + t[2][i] * batch + t[3][i] * kv_tokens

    def prefill_s(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        t = self._pre.get(clock_mhz) or self._table(self._pre, self.prefill, False, clock_mhz)
        i = bisect.bisect_right(t[0], tokens) - 1
        if i < 0:
            i = 0
        n = num_seqs if num_seqs > 0 else 1
        c = tokens / n
        # perfmodel.prefill_pairs, inlined: this is the controller's per-iteration call.
        return t[1][i] + t[2][i] * tokens + t[3][i] * n + t[4][i] * (n * c * (c + 1) * 0.5)

    def decode_j(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        t = self._dec_j.get(clock_mhz) or self._table(self._dec_j, self.decode, True, clock_mhz)
        i = max(bisect.bisect_right(t[0], batch) - 1, 0)
        return t[1][i] + t[2][i] * batch + t[3][i] * kv_tokens

    def prefill_j(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        t = self._pre_j.get(clock_mhz) or self._table(self._pre_j, self.prefill, True, clock_mhz)
        i = max(bisect.bisect_right(t[0], tokens) - 1, 0)
        n = num_seqs if num_seqs > 0 else 1
        c = tokens / n
        return t[1][i] + t[2][i] * tokens + t[3][i] * n + t[4][i] * (n * c * (c + 1) * 0.5)

    def predict_frame(self, phase: str, df: pd.DataFrame, energy: bool = False) -> np.ndarray:
        """Predictions for profile rows: latency in ms, or energy in J."""
        fn = {("decode", False): self.decode_s, ("prefill", False): self.prefill_s,
              ("decode", True): self.decode_j, ("prefill", True): self.prefill_j}[(phase, energy)]
        scale = 1.0 if energy else 1e3
        if phase == "decode":
            it = zip(df["batch_size"], df["num_tokens"], df["clock_mhz"], strict=True)
            return np.array([fn(int(b), int(t), int(c)) * scale for b, t, c in it])
        it = zip(df["num_tokens"], df["batch_size"], df["clock_mhz"], strict=True)
        return np.array([fn(int(t), int(b), int(c)) * scale for t, b, c in it])

    # ---- YAML form ----
    def to_dict(self) -> dict[str, Any]:
        def phase(pm: PhaseModel) -> dict[str, Any]:
            his = [e - 1 for e in pm.edges[1:]] + [None]
            return {
                "features": ["intercept", *PHASE_FEATURES[pm.phase]],
                "segments": [[lo, hi] for lo, hi in zip(pm.edges, his, strict=True)],
                "latency_ms": {int(c): [[_r(v) for v in seg] for seg in segs] for c, segs in pm.latency_ms.items()},
                "energy_j": None if pm.energy_j is None else
                {int(c): [[_r(v) for v in seg] for seg in segs] for c, segs in pm.energy_j.items()},
            }

        return {
            "schema": SCHEMA,
            **self.info,
            "clocks_mhz": self.clocks_mhz,
            "interpolation": "linear in 1/clock between profiled clocks; no extrapolation",
            "decode": phase(self.decode),
            "prefill": phase(self.prefill),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "predictor") -> EcoPred:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise UserError(f"{where}: schema {got!r} is not {SCHEMA!r}; refit with `voltana tune --fit-only`")

        def phase(name: str) -> PhaseModel:
            p = d.get(name)
            if not isinstance(p, dict):
                raise UserError(f"{where}: missing the {name!r} section")
            try:
                segs = p["segments"]
                edges = [int(s[0]) for s in segs]
                width = len(PHASE_FEATURES[name]) + 1

                def table(raw: Any, field_: str) -> dict[int, list[list[float]]]:
                    out = {}
                    for c, rows in raw.items():
                        if len(rows) != len(edges) or any(len(r) != width for r in rows):
                            raise UserError(f"{where}: {name}.{field_}.{c} needs {len(edges)} segments of {width} numbers")
                        out[int(c)] = [[float(v) for v in r] for r in rows]
                    return out

                lat = table(p["latency_ms"], "latency_ms")
                en = None if p.get("energy_j") is None else table(p["energy_j"], "energy_j")
            except (KeyError, TypeError, ValueError) as exc:
                raise UserError(f"{where}: malformed {name!r} section ({exc.__class__.__name__}: {exc})") from None
            if edges != sorted(set(edges)):
                raise UserError(f"{where}: {name}.segments must ascend without repeats")
            return PhaseModel(name, edges, lat, en)

        info = {k: v for k, v in d.items() if k not in ("schema", "clocks_mhz", "interpolation", "decode", "prefill")}
        return cls(phase("decode"), phase("prefill"), info)


def _r(v: float) -> float:
    return float(f"{v:.9g}")


# ---- fitting from a profile, with held-out accuracy --------------------------------------------------------
@dataclass
class FitReport:
    predictor: EcoPred
    steps: list[Step]
    accuracy: dict[str, Any]  # phase -> clock -> {mae_ms, mape_pct, r2, n}
    energy_accuracy: dict[str, Any] | None
    families: dict[str, Any] = field(default_factory=dict)  # family -> phase -> worst-clock MAPE etc.
    chosen: str = "ecopred-linear"
    fit_seconds: float = 0.0


def holdout_mask(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """True for rows of held-out configurations (phase, clock, batch, tokens): every repeat goes together."""
    if not 0 < fraction < 1:
        raise UserError(f"--holdout {fraction}: use a fraction between 0 and 1, e.g. 0.2")
    keys = (df["phase"] + ":" + df["clock_mhz"].astype(str) + ":" + df["batch_size"].astype(str) + ":"
            + df["num_tokens"].astype(str))
    uniq = keys.unique()
    rng = np.random.default_rng(seed)
    held = set(rng.choice(uniq, size=max(1, int(round(fraction * len(uniq)))), replace=False).tolist())
    return keys.isin(held).to_numpy()


def _metrics(y: np.ndarray, p: np.ndarray, unit: str) -> dict[str, float]:
    from sklearn.metrics import r2_score  # noqa: PLC0415

    err = p - y
    return {
        f"mae_{unit}": float(np.mean(np.abs(err))),
        "mape_pct": float(np.mean(np.abs(err) / np.abs(y)) * 100),
        "r2": float(r2_score(y, p)) if len(y) > 1 else math.nan,
        "n": int(len(y)),
    }


def fit_ecopred(profile: Profile, seed: int = 0) -> tuple[EcoPred, list[Step]]:
    """Fit on every row of ``profile``."""
    df = profile.data
    dec, pre = df[df["phase"] == "decode"], df[df["phase"] == "prefill"]
    if dec.empty or pre.empty:
        missing = "decode" if dec.empty else "prefill"
        raise UserError(f"profile {profile.source}: no {missing} rows; EcoPred needs both phases")
    with_energy = profile.has_energy
    steps = detect_steps(dec)
    dec_edges = segment("decode", dec, [s.after for s in steps])
    # Prefill: a knot at every profiled token count (few of them, each with several sequence counts), so
    # the roofline corner of short batches is followed exactly and the sequence and attention-pair
    # coefficients are identified from the variation at equal token counts.
    pre_edges = sorted(int(t) for t in pre["num_tokens"].unique())
    info = {
        "voltana_version": __version__,
        "fitted": pd.Timestamp.now(tz="UTC").floor("s").isoformat(),
        "gpu": profile.meta.gpu, "model": profile.meta.model, "tp": profile.meta.tp, "engine": profile.meta.engine,
        "source": {"profile": profile.source, "backend": profile.meta.backend, "rows": len(df),
                   "sha256": hashlib.sha256(pd.util.hash_pandas_object(df, index=False).values.tobytes()).hexdigest()},
        "steps": [{"after_batch": s.after, "jump_ms": s.jump_ms, "rel": s.rel, "clocks_seen": s.clocks_seen,
                   "clocks_total": s.clocks_total} for s in steps],
    }
    pred = EcoPred(fit_phase("decode", dec, dec_edges, {s.after for s in steps}, with_energy),
                   fit_phase("prefill", pre, pre_edges, set(), with_energy), info)
    return pred, steps


def evaluate(profile: Profile, holdout: float = 0.2, seed: int = 0, compare_gbt: bool = True) -> FitReport:
    """Fit on the kept configurations, score on the held-out ones, then refit on everything."""
    t0 = time.perf_counter()
    df = profile.data
    mask = holdout_mask(df, holdout, seed)
    train = Profile(df[~mask].reset_index(drop=True), profile.meta, profile.source)
    test = df[mask]
    pred_train, _ = fit_ecopred(train, seed)
    acc: dict[str, Any] = {}
    eacc: dict[str, Any] | None = {} if profile.has_energy else None
    for phase in ("prefill", "decode"):
        acc[phase] = {}
        if eacc is not None:
            eacc[phase] = {}
        tp = test[test["phase"] == phase]
        for clock, g in tp.groupby("clock_mhz", sort=True):
            p = pred_train.predict_frame(phase, g)
            acc[phase][str(int(clock))] = _metrics(g["latency_ms"].to_numpy(dtype=float), p, "ms")
            if eacc is not None:
                ok = g["energy_j"].notna().to_numpy()
                if ok.any():
                    pe = pred_train.predict_frame(phase, g[ok], energy=True)
                    eacc[phase][str(int(clock))] = _metrics(g["energy_j"].to_numpy(dtype=float)[ok], pe, "j")
    families = {"ecopred-linear": _family_summary(acc)}
    if compare_gbt:
        families["gbt"] = _gbt_summary(df[~mask], test, seed)
    final, steps = fit_ecopred(profile, seed)
    return FitReport(final, steps, acc, eacc, families, "ecopred-linear", time.perf_counter() - t0)


def _family_summary(acc: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for phase, by_clock in acc.items():
        if by_clock:
            out[phase] = {
                "worst_mape_pct": max(v["mape_pct"] for v in by_clock.values()),
                "mean_mape_pct": float(np.mean([v["mape_pct"] for v in by_clock.values()])),
            }
    return out


def gbt_features(phase: str, df: pd.DataFrame) -> np.ndarray:
    return np.column_stack([df["clock_mhz"].to_numpy(dtype=float), features(phase, df)])


def _gbt_summary(train: pd.DataFrame, test: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Gradient-boosted trees on (clock, features) per phase, as throttLL'eM used: same held-out rows."""
    from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415

    out: dict[str, Any] = {}
    for phase in ("prefill", "decode"):
        tr, te = train[train["phase"] == phase], test[test["phase"] == phase]
        if tr.empty or te.empty:
            continue
        m = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.1, random_state=seed)
        m.fit(gbt_features(phase, tr), np.log(tr["latency_ms"].to_numpy(dtype=float)))
        p = np.exp(m.predict(gbt_features(phase, te)))
        per = {}
        for clock, g in te.assign(_p=p).groupby("clock_mhz"):
            y = g["latency_ms"].to_numpy(dtype=float)
            per[str(int(clock))] = float(np.mean(np.abs(g["_p"].to_numpy() - y) / y) * 100)
        out[phase] = {"worst_mape_pct": max(per.values()), "mean_mape_pct": float(np.mean(list(per.values())))}
    return out


# ---- the tuned-config file ----------------------------------------------------------------------------------
TUNED_SCHEMA = "voltana.tuned/1"


def accuracy_report(rep: FitReport, holdout: float) -> dict[str, Any]:
    """The ``--json`` document: per phase and clock ``mae_ms``, ``mape_pct``, ``r2`` (held-out rows)."""
    return {
        "voltana_version": __version__,
        "holdout_fraction": holdout,
        "prefill": rep.accuracy.get("prefill", {}),
        "decode": rep.accuracy.get("decode", {}),
        "energy": rep.energy_accuracy,
        "steps": rep.predictor.info.get("steps", []),
        "segments": {"decode": rep.predictor.decode.edges, "prefill": rep.predictor.prefill.edges},
        "families": rep.families,
        "chosen": rep.chosen,
        "source": rep.predictor.info.get("source"),
    }


def tuned_document(rep: FitReport, holdout: float) -> dict[str, Any]:
    acc = accuracy_report(rep, holdout)
    return {
        "schema": TUNED_SCHEMA,
        "predictor": rep.predictor.to_dict(),
        "accuracy": {k: acc[k] for k in ("holdout_fraction", "prefill", "decode", "energy", "families", "chosen")},
    }


def load_predictor(path: str | Path) -> EcoPred:
    """The predictor of a tuned-config file (``voltana tune --fit-only --out``)."""
    import yaml  # noqa: PLC0415

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: no such file; write one with `voltana tune --fit-only --profile P --out {p}`") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: not valid YAML ({exc.__class__.__name__}); regenerate it with `voltana tune --fit-only`") from None
    if not isinstance(raw, dict) or raw.get("schema") != TUNED_SCHEMA:
        got = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"{p}: schema {got!r} is not {TUNED_SCHEMA!r}; regenerate it with `voltana tune --fit-only`")
    return EcoPred.from_dict(raw.get("predictor"), str(p))
