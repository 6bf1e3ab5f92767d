"""Fit EcoPred on every row of a profile: steps, then segments, then each phase, with provenance."""

from __future__ import annotations

import hashlib

import pandas as pd

from voltana_cli import __version__
from voltana_cli.core.errors import UserError
from voltana_cli.core.models.ecopred.fit import fit_phase
from voltana_cli.core.models.ecopred.predictor import EcoPred
from voltana_cli.core.models.ecopred.segments import segment
from voltana_cli.core.models.ecopred.steps import Step, detect_steps
from voltana_cli.core.models.profile import Profile


def fit_ecopred(profile: Profile, seed: int = 0) -> tuple[EcoPred, list[Step]]:
    """Fit on every row of ``profile``.

    Args:
        profile: a profile with both decode and prefill rows.
        seed: kept for the callers' signature; the fit itself is deterministic.

    Returns:
        The predictor (its ``info`` records version, fit time, GPU, model, source and steps) and the steps.

    Raises:
        UserError: the profile lacks one phase, or a clock has no usable rows.
    """
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
                   "sha256": _frame_sha256(df)},
        "steps": [{"after_batch": s.after, "jump_ms": s.jump_ms, "rel": s.rel, "clocks_seen": s.clocks_seen,
                   "clocks_total": s.clocks_total} for s in steps],
    }
    pred = EcoPred(fit_phase("decode", dec, dec_edges, {s.after for s in steps}, with_energy),
                   fit_phase("prefill", pre, pre_edges, set(), with_energy), info)
    return pred, steps


def _frame_sha256(df: pd.DataFrame) -> str:
    """A content hash of the rows (not the index), so a tuned file names the exact data it came from."""
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()
