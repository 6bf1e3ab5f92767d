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
    for phase, rows in (("decode", dec), ("prefill", pre)):
        _check_fittable(phase, rows, profile.source)
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


#: What one clock's rows must span for the fit to identify its terms: decode needs several batch sizes (its
#: slope, and segments between steps) and two context lengths (the KV term); prefill needs two token counts
#: and two sequence counts at one of them (the per-sequence and attention-pair terms).
MIN_DECODE_BATCH_SIZES = 3
MIN_DISTINCT = 2


def _check_fittable(phase: str, rows: pd.DataFrame, source: str) -> None:
    """Say what a profile lacks, per clock, before the fit fails on it."""
    for clock, g in rows.groupby("clock_mhz"):
        if phase == "decode":
            sizes = g["batch_size"].nunique()
            ctx = (g["num_tokens"] // g["batch_size"]).nunique()
            if sizes < MIN_DECODE_BATCH_SIZES or ctx < MIN_DISTINCT:
                raise UserError(f"profile {source}: at {clock} MHz the decode rows cover {sizes} batch size(s) and "
                                f"{ctx} context length(s); EcoPred needs at least {MIN_DECODE_BATCH_SIZES} and "
                                f"{MIN_DISTINCT}: profile more batch sizes and KV lengths (the default plan has both)")
        else:
            tokens = g["num_tokens"].nunique()
            seqs = g.groupby("num_tokens")["batch_size"].nunique().max()
            if tokens < MIN_DISTINCT or seqs < MIN_DISTINCT:
                raise UserError(f"profile {source}: at {clock} MHz the prefill rows cover {tokens} token count(s) and "
                                f"at most {seqs} sequence count(s) per token count; EcoPred needs at least "
                                f"{MIN_DISTINCT} of each: profile more prefill shapes (the default plan has them)")


def _frame_sha256(df: pd.DataFrame) -> str:
    """A content hash of the rows (not the index), so a tuned file names the exact data it came from."""
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()
