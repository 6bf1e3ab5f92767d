"""Tuning from a profile: fit EcoPred, measure it on held-out configurations (next to gradient-boosted trees),
and read and write the tuned-config file (``voltana.tuned/1``) that carries the predictor.

- ``fitonly``: ``evaluate`` -> ``FitReport``, ``holdout_mask``, the GBT comparison;
- ``tuned_file``: ``accuracy_report`` (the ``--json`` document), ``tuned_document``, ``write_tuned_config``,
  ``load_predictor``.

Controller and router auto-tuning arrive in a later version.
"""

from voltana_cli.core.tune.fitonly import CHOSEN_FAMILY, FitReport, evaluate, gbt_features, holdout_mask
from voltana_cli.core.tune.tuned_file import (
    TUNED_HEADER,
    TUNED_SCHEMA,
    accuracy_report,
    load_predictor,
    tuned_config_text,
    tuned_document,
    write_tuned_config,
)

__all__ = [
    "CHOSEN_FAMILY",
    "TUNED_HEADER",
    "TUNED_SCHEMA",
    "FitReport",
    "accuracy_report",
    "evaluate",
    "gbt_features",
    "holdout_mask",
    "load_predictor",
    "tuned_config_text",
    "tuned_document",
    "write_tuned_config",
]
