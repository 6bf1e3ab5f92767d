"""Tuning: fit EcoPred from a profile, and choose the feedback controller's and router's knobs by simulation.

- ``scenario``: ``Scenario``, the one simulated world bench and tune run policies in;
- ``static_best``: ``find_static_best``, the static prefill/decode clock pair with the least energy that
  meets a rate's requirement (``requirement_for``), and ``find_searched`` for every searched policy name
  (``colocated``: the colocated layout at its best static clock; ``oracle``: the least budget margin that
  meets the requirement, ``find_oracle``);
- ``search``: ``run_study``, the Optuna search (constrained TPE, shared storage, local workers);
- ``run``: ``run_tune`` (requirements, search, validation on held-out traffic), ``TuneSpec``, ``table_rows``;
- ``fitonly``: ``evaluate`` -> ``FitReport``, ``holdout_mask``, the GBT comparison;
- ``tuned_file``: the tuned-config file (``voltana.tuned/3``) and its one loader, ``load_tuned``.
"""

from voltana_cli.core.tune.fitonly import CHOSEN_FAMILY, FitReport, evaluate, gbt_features, holdout_mask
from voltana_cli.core.tune.run import TuneOutcome, TuneSpec, run_tune, table_rows
from voltana_cli.core.tune.scenario import Scenario
from voltana_cli.core.tune.search import StudyResult, run_study, storage_for
from voltana_cli.core.tune.static_best import (
    StaticBest,
    find_searched,
    find_static_best,
    requirement_for,
    searched_fallback,
)
from voltana_cli.core.tune.tuned_file import (
    TUNED_HEADER,
    TUNED_SCHEMA,
    TunedConfig,
    accuracy_report,
    load_predictor,
    load_tuned,
    policy_to_dict,
    tune_document,
    tuned_config_text,
    tuned_document,
    write_document,
    write_tuned_config,
)

__all__ = [
    "CHOSEN_FAMILY",
    "TUNED_HEADER",
    "TUNED_SCHEMA",
    "FitReport",
    "Scenario",
    "StaticBest",
    "StudyResult",
    "TuneOutcome",
    "TuneSpec",
    "TunedConfig",
    "accuracy_report",
    "evaluate",
    "find_searched",
    "searched_fallback",
    "find_static_best",
    "gbt_features",
    "holdout_mask",
    "load_predictor",
    "load_tuned",
    "policy_to_dict",
    "requirement_for",
    "run_study",
    "run_tune",
    "storage_for",
    "table_rows",
    "tune_document",
    "tuned_config_text",
    "tuned_document",
    "write_document",
    "write_tuned_config",
]
