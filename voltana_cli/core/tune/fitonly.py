"""``voltana tune --fit-only`` as a library call: fit EcoPred and measure its accuracy on held-out
configurations, next to gradient-boosted trees as a yardstick.

Accuracy is measured on held-out configurations (all repeats of a held-out configuration are left out, so
repeats never leak); then the predictor is refitted on every row.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.ecopred import EcoPred, Step, features, fit_ecopred
from voltana_cli.core.models.profile import Profile

#: The family ``evaluate`` chooses: the only one with microsecond calls and a readable file.
CHOSEN_FAMILY = "ecopred-linear"


@dataclass
class FitReport:
    """A predictor fitted on every row, with the accuracy measured before the refit.

    Attributes:
        predictor: fitted on every row of the profile.
        steps: the decode steps detected on every row.
        accuracy: phase -> clock (str) -> ``{mae_ms, mape_pct, r2, n}`` on held-out rows.
        energy_accuracy: the same for energy (``mae_j``), or ``None`` when the profile has no energy.
        families: family -> phase -> ``{worst_mape_pct, mean_mape_pct}`` over clocks.
        chosen: the family whose predictor this is.
        fit_seconds: wall time of the fit, the held-out scoring and the refit.
    """

    predictor: EcoPred
    steps: list[Step]
    accuracy: dict[str, Any]
    energy_accuracy: dict[str, Any] | None
    families: dict[str, Any] = field(default_factory=dict)
    chosen: str = CHOSEN_FAMILY
    fit_seconds: float = 0.0


def holdout_mask(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Rows of held-out configurations (phase, clock, batch, tokens): every repeat goes together.

    Args:
        df: profile rows.
        fraction: share of configurations held out, strictly between 0 and 1.
        seed: seed of the choice.

    Returns:
        A boolean mask over ``df``'s rows, True where held out (at least one configuration).

    Raises:
        UserError: (field ``holdout``) ``fraction`` is not strictly between 0 and 1.
    """
    if not 0 < fraction < 1:
        raise UserError(f"{fraction} is not a fraction between 0 and 1; use e.g. 0.2", field="holdout")
    keys = (df["phase"] + ":" + df["clock_mhz"].astype(str) + ":" + df["batch_size"].astype(str) + ":"
            + df["num_tokens"].astype(str))
    uniq = keys.unique()
    rng = np.random.default_rng(seed)
    held = set(rng.choice(uniq, size=max(1, int(round(fraction * len(uniq)))), replace=False).tolist())
    return cast(np.ndarray, keys.isin(held).to_numpy())


def _metrics(y: np.ndarray, p: np.ndarray, unit: str) -> dict[str, float]:
    # Imported here: sklearn is slow to import and only scoring needs it.
    from sklearn.metrics import r2_score  # noqa: PLC0415

    err = p - y
    return {
        f"mae_{unit}": float(np.mean(np.abs(err))),
        "mape_pct": float(np.mean(np.abs(err) / np.abs(y)) * 100),
        "r2": float(r2_score(y, p)) if len(y) > 1 else math.nan,
        "n": int(len(y)),
    }


def _score(pred: EcoPred, test: pd.DataFrame, with_energy: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Latency (and energy) metrics of ``pred`` on ``test``, per phase and clock."""
    acc: dict[str, Any] = {}
    eacc: dict[str, Any] | None = {} if with_energy else None
    for phase in ("prefill", "decode"):
        acc[phase] = {}
        if eacc is not None:
            eacc[phase] = {}
        tp = test[test["phase"] == phase]
        for clock, g in tp.groupby("clock_mhz", sort=True):
            key = str(int(cast(int, clock)))
            p = pred.predict_frame(phase, g)
            acc[phase][key] = _metrics(g["latency_ms"].to_numpy(dtype=float), p, "ms")
            if eacc is not None:
                ok = g["energy_j"].notna().to_numpy()
                if ok.any():
                    pe = pred.predict_frame(phase, g[ok], energy=True)
                    eacc[phase][key] = _metrics(g["energy_j"].to_numpy(dtype=float)[ok], pe, "j")
    return acc, eacc


def evaluate(profile: Profile, holdout: float = 0.2, seed: int = 0, compare_gbt: bool = True) -> FitReport:
    """Fit on the kept configurations, score on the held-out ones, then refit on everything.

    Args:
        profile: the profile to fit.
        holdout: share of configurations held out for scoring, strictly between 0 and 1.
        seed: seed of the held-out split (and of the trees).
        compare_gbt: also score gradient-boosted trees on the same held-out rows.

    Returns:
        The report; its predictor is fitted on every row.

    Raises:
        UserError: a bad ``holdout`` (field ``holdout``), or a profile EcoPred cannot be fitted on.
    """
    t0 = time.perf_counter()
    if seed < 0:
        raise UserError(f"{seed} must be a whole number >= 0", field="seed")
    df = profile.data
    final, steps = fit_ecopred(profile, seed)  # first: the whole profile must be fittable at all
    mask = holdout_mask(df, holdout, seed)
    train = Profile(df[~mask].reset_index(drop=True), profile.meta, profile.source)
    test = df[mask]
    try:
        pred_train, _ = fit_ecopred(train, seed)
    except UserError as exc:
        raise UserError(f"{holdout:g} leaves too little to fit on: {exc}; hold out less (e.g. 0.2)",
                        field="holdout") from None
    acc, eacc = _score(pred_train, test, profile.has_energy)
    families = {CHOSEN_FAMILY: _family_summary(acc)}
    if compare_gbt:
        families["gbt"] = _gbt_summary(df[~mask], test, seed)
    return FitReport(final, steps, acc, eacc, families, CHOSEN_FAMILY, time.perf_counter() - t0)


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
    """The trees' design matrix: the clock, then EcoPred's features of the phase."""
    return np.column_stack([df["clock_mhz"].to_numpy(dtype=float), features(phase, df)])


def _gbt_summary(train: pd.DataFrame, test: pd.DataFrame, seed: int) -> dict[str, Any]:
    """Gradient-boosted trees on (clock, features) per phase, as throttLL'eM used: same held-out rows."""
    # Imported here: sklearn is slow to import and only this comparison needs the trees.
    from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: PLC0415

    out: dict[str, Any] = {}
    for phase in ("prefill", "decode"):
        tr, te = train[train["phase"] == phase], test[test["phase"] == phase]
        if tr.empty or te.empty:
            continue
        m = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.1, random_state=seed)
        # Fitted on log latency: errors are relative, like EcoPred's residuals.
        m.fit(gbt_features(phase, tr), np.log(tr["latency_ms"].to_numpy(dtype=float)))
        p = np.exp(m.predict(gbt_features(phase, te)))
        per = {}
        for clock, g in te.assign(_p=p).groupby("clock_mhz"):
            y = g["latency_ms"].to_numpy(dtype=float)
            per[str(int(cast(int, clock)))] = float(np.mean(np.abs(g["_p"].to_numpy() - y) / y) * 100)
        out[phase] = {"worst_mape_pct": max(per.values()), "mean_mape_pct": float(np.mean(list(per.values())))}
    return out
