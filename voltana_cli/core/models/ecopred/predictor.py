"""The fitted predictor: microsecond calls, interpolation in 1/f between profiled clocks, and its YAML form
(schema ``voltana.ecopred/1``).

Clocks between profiled ones are interpolated linearly in the period 1/f (latency is close to
``α + β / f``); outside the profiled range the predictor refuses rather than guessing.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np
import pandas as pd

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.analytical import prefill_pairs
from voltana_cli.core.models.ecopred.fit import PhaseModel
from voltana_cli.core.models.ecopred.phase_features import PHASE_FEATURES

SCHEMA = "voltana.ecopred/1"
#: Top-level keys of the YAML form that are not free-form ``info``.
_STRUCTURE_KEYS = ("schema", "clocks_mhz", "interpolation", "decode", "prefill")


class EcoPred:
    """Fitted predictors: ``decode_s``/``prefill_s`` (seconds) and ``decode_j``/``prefill_j`` (joules).

    Calls for a clock between profiled clocks interpolate (linearly in 1/f) on first use and cache.

    Args:
        decode: the decode phase's fitted segments.
        prefill: the prefill phase's fitted segments.
        info: provenance (version, GPU, model, source profile, steps) carried into the YAML form.

    Raises:
        UserError: no clock has both phases fitted.
    """

    def __init__(self, decode: PhaseModel, prefill: PhaseModel, info: dict[str, Any] | None = None) -> None:
        self.decode = decode
        self.prefill = prefill
        self.info = info or {}
        self.clocks_mhz = sorted(set(decode.latency_ms) & set(prefill.latency_ms))
        if not self.clocks_mhz:
            raise UserError("the profile has no clock with both prefill and decode rows: profile both phases")
        # Per-clock coefficient tables, built on first use: (edges, b, a, others...) in seconds or joules.
        self._dec: dict[int, tuple] = {}
        self._pre: dict[int, tuple] = {}
        self._dec_j: dict[int, tuple] = {}
        self._pre_j: dict[int, tuple] = {}

    @property
    def has_energy(self) -> bool:
        """Whether both phases have an energy model (the profile had energy readings)."""
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

    # The four calls below are the controller's per-iteration hot path: cache hit first, no helpers.
    def decode_s(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        """Decode iteration latency (s) of ``batch`` sequences holding ``kv_tokens`` KV tokens in all."""
        t = self._dec.get(clock_mhz) or self._table(self._dec, self.decode, False, clock_mhz)
        i = bisect.bisect_right(t[0], batch) - 1
        if i < 0:
            i = 0
        return t[1][i] + t[2][i] * batch + t[3][i] * kv_tokens

    def prefill_s(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        """Prefill iteration latency (s) of ``tokens`` new tokens over ``num_seqs`` sequences."""
        t = self._pre.get(clock_mhz) or self._table(self._pre, self.prefill, False, clock_mhz)
        i = bisect.bisect_right(t[0], tokens) - 1
        if i < 0:
            i = 0
        n = num_seqs if num_seqs > 0 else 1
        c = tokens / n
        # perfmodel.prefill_pairs, inlined: this is the controller's per-iteration call.
        return t[1][i] + t[2][i] * tokens + t[3][i] * n + t[4][i] * (n * c * (c + 1) * 0.5)

    def decode_j(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        """Decode iteration energy (J); see ``decode_s``."""
        t = self._dec_j.get(clock_mhz) or self._table(self._dec_j, self.decode, True, clock_mhz)
        i = max(bisect.bisect_right(t[0], batch) - 1, 0)
        return t[1][i] + t[2][i] * batch + t[3][i] * kv_tokens

    def prefill_j(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        """Prefill iteration energy (J); see ``prefill_s``."""
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
        """The ``voltana.ecopred/1`` document: ``info``, clocks, and per phase its segments and lines per clock."""
        return {
            "schema": SCHEMA,
            **self.info,
            "clocks_mhz": self.clocks_mhz,
            "interpolation": "linear in 1/clock between profiled clocks; no extrapolation",
            "decode": _phase_to_dict(self.decode),
            "prefill": _phase_to_dict(self.prefill),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "predictor") -> EcoPred:
        """The predictor of a ``voltana.ecopred/1`` document (as ``to_dict`` writes it).

        Args:
            d: the parsed document.
            where: what the document is (a file path), to start error messages with.

        Raises:
            UserError: wrong schema, or a missing or malformed phase section.
        """
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise UserError(f"{where}: schema {got!r} is not {SCHEMA!r}; refit with `voltana tune --fit-only`")
        info = {k: v for k, v in d.items() if k not in _STRUCTURE_KEYS}
        return cls(_phase_from_dict(d, "decode", where), _phase_from_dict(d, "prefill", where), info)


def _r(v: float) -> float:
    # Nine significant digits: exact enough for the predictions, short enough to read in the YAML.
    return float(f"{v:.9g}")


def _phase_to_dict(pm: PhaseModel) -> dict[str, Any]:
    his = [e - 1 for e in pm.edges[1:]] + [None]
    return {
        "features": ["intercept", *PHASE_FEATURES[pm.phase]],
        "segments": [[lo, hi] for lo, hi in zip(pm.edges, his, strict=True)],
        "latency_ms": {int(c): [[_r(v) for v in seg] for seg in segs] for c, segs in pm.latency_ms.items()},
        "energy_j": None if pm.energy_j is None else
        {int(c): [[_r(v) for v in seg] for seg in segs] for c, segs in pm.energy_j.items()},
    }


def _lines_from_dict(raw: Any, nseg: int, width: int, where: str) -> dict[int, list[list[float]]]:
    """Per-clock lines of one table (``where``: its dotted location); every clock needs ``nseg`` x ``width``."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} must map each clock (MHz) to its segments, not a {type(raw).__name__}")
    out = {}
    for c, rows in raw.items():
        if not isinstance(rows, list) or len(rows) != nseg or any(not isinstance(r, list) or len(r) != width
                                                                     for r in rows):
            raise UserError(f"{where}.{c} needs {nseg} segments of {width} numbers")
        try:
            clock, lines = int(c), [[float(v) for v in r] for r in rows]
        except (TypeError, ValueError):
            raise UserError(f"{where}.{c}: every clock and coefficient must be a number") from None
        for seg, line in enumerate(lines):
            # Every coefficient is finite and the KV / sequence / pair terms are >= 0, as the fit bounds them
            # (the batch or token slope of one segment may be negative: segments meet with free jumps);
            # anything else is a damaged file that would steer the controller with NaN or negative latencies.
            if not all(math.isfinite(v) for v in line) or any(v < 0 for v in line[2:]):
                raise UserError(f"{where}.{c} segment {seg + 1}: {line} has a non-finite coefficient or a negative "
                                "KV, sequence or pair term; refit with `voltana tune --fit-only`")
        out[clock] = lines
    return out


def _phase_from_dict(d: dict[str, Any], name: str, where: str) -> PhaseModel:
    p = d.get(name)
    if not isinstance(p, dict):
        raise UserError(f"{where}: missing the {name!r} section")
    try:
        segs = p["segments"]
        edges = [int(s[0]) for s in segs]
        width = len(PHASE_FEATURES[name]) + 1
        lat = _lines_from_dict(p["latency_ms"], len(edges), width, f"{where}: {name}.latency_ms")
        en = None if p.get("energy_j") is None else _lines_from_dict(p["energy_j"], len(edges), width,
                                                                      f"{where}: {name}.energy_j")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: malformed {name!r} section ({exc.__class__.__name__}: {exc})") from None
    if edges != sorted(set(edges)):
        raise UserError(f"{where}: {name}.segments must ascend without repeats")
    for table, unit, lines in (("latency_ms", "ms", lat), ("energy_j", "J", en or {})):
        _check_positive(name, edges, lines, f"{where}: {name}.{table}", unit)
    return PhaseModel(name, edges, lat, en)


def _check_positive(phase: str, edges: list[int], lines: dict[int, list[list[float]]], where: str, unit: str) -> None:
    """Refuse a table that predicts a time or energy <= 0 at a segment's edges (the last, open segment: its
    start), for the plainest shape there: decode with one KV token per request, prefill of one sequence.
    Coefficients may be negative one by one (a segment's slope, its intercept); a prediction may not. (The
    open end is not checked: a measured profile's last slope may fall, and far beyond the profiled sizes
    the line is an extrapolation whatever its sign.)"""
    for seg, lo in enumerate(edges):
        for x in (lo, edges[seg + 1] - 1) if seg + 1 < len(edges) else (lo,):
            x = max(x, 1)
            feats = [x, x] if phase == "decode" else [x, 1, float(prefill_pairs(np.array([x]), np.array([1]))[0])]
            for c, segs in lines.items():
                v = segs[seg][0] + sum(k * f for k, f in zip(segs[seg][1:], feats, strict=True))
                if not v > 0:
                    what = "a batch of" if phase == "decode" else "a prefill of"
                    raise UserError(f"{where}.{c} segment {seg + 1}: predicts {v:.3g} {unit} for {what} {x} "
                                    f"{'request(s)' if phase == 'decode' else 'token(s)'}; a predictor must predict "
                                    "more than 0: refit with `voltana tune --fit-only`")
