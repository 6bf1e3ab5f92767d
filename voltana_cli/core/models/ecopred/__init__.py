"""EcoPred: interpretable latency and energy predictors fitted from a profile (PAPER.md §5, generalised).

Shape (the paper's):
- decode, per clock and batch-size segment: ``t = b + a * batch_size + c * kv_tokens``;
- prefill, per clock and batch-token segment: ``t = b + a * tokens + s * seqs + q * pairs`` where ``pairs`` is
  the causal attention work of the batch;
- energy (J) with the same segments.

Modules, by concern:
- ``phase_features``: the feature columns per phase and the column each phase is segmented along;
- ``steps``: decode step detection (jumps between sampled neighbours ``b`` and ``b + 1``);
- ``segments``: segmentation, cut at the steps and split where a line misfits beyond the noise;
- ``fit``: the per-clock constrained, robust fit of one phase (``fit_phase``, ``PhaseModel``);
- ``predictor``: the ``EcoPred`` object (microsecond calls, interpolation in 1/f, no extrapolation) and its
  ``voltana.ecopred/1`` YAML form;
- ``from_profile``: ``fit_ecopred``, the whole fit on every row of a profile.

Held-out accuracy and the tuned-config file that carries a predictor are ``voltana_cli.core.tune``.
"""

from __future__ import annotations

from voltana_cli.core.models.ecopred.fit import TRIM_Z, PhaseModel, fit_phase
from voltana_cli.core.models.ecopred.from_profile import fit_ecopred
from voltana_cli.core.models.ecopred.phase_features import PHASE_FEATURES, features, segment_key
from voltana_cli.core.models.ecopred.predictor import SCHEMA, EcoPred
from voltana_cli.core.models.ecopred.segments import SPLIT_FLOOR, SPLIT_NOISE, segment
from voltana_cli.core.models.ecopred.steps import STEP_MIN_REL, STEP_Z, Step, detect_steps, kv_free_latency

__all__ = [
    "PHASE_FEATURES",
    "SCHEMA",
    "SPLIT_FLOOR",
    "SPLIT_NOISE",
    "STEP_MIN_REL",
    "STEP_Z",
    "TRIM_Z",
    "EcoPred",
    "PhaseModel",
    "Step",
    "detect_steps",
    "features",
    "fit_ecopred",
    "fit_phase",
    "kv_free_latency",
    "segment",
    "segment_key",
]

