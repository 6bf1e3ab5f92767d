"""The tuned-config file (schema ``voltana.tuned/1``): a fitted predictor with its held-out accuracy, and the
accuracy document on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from voltana_cli import __version__
from voltana_cli.core.errors import UserError
from voltana_cli.core.models.ecopred import EcoPred
from voltana_cli.core.report import write_text
from voltana_cli.core.tune.fitonly import FitReport

TUNED_SCHEMA = "voltana.tuned/1"
#: The comment that opens a tuned-config file, so a reader knows the shape of the lines without the README.
TUNED_HEADER = (
    "# voltana tuned config: EcoPred predictors fitted by `voltana tune --fit-only`.\n"
    "# decode latency_ms = b + a*batch_size + c*kv_tokens; prefill latency_ms = b + a*tokens + s*seqs "
    "+ q*pairs (per segment, per clock).\n"
)


def accuracy_report(rep: FitReport, holdout: float) -> dict[str, Any]:
    """The accuracy document (``voltana tune --json``).

    Args:
        rep: the fit and its held-out accuracy.
        holdout: the share of configurations that was held out.

    Returns:
        Per phase and clock ``mae_ms``, ``mape_pct``, ``r2``, ``n`` on held-out rows; energy accuracy; the
        steps and segments found; the families compared and the one chosen; the source profile.
    """
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
    """The tuned-config document: the predictor's ``voltana.ecopred/1`` form and its held-out accuracy.

    Args:
        rep: the fit and its held-out accuracy.
        holdout: the share of configurations that was held out.
    """
    acc = accuracy_report(rep, holdout)
    return {
        "schema": TUNED_SCHEMA,
        "predictor": rep.predictor.to_dict(),
        "accuracy": {k: acc[k] for k in ("holdout_fraction", "prefill", "decode", "energy", "families", "chosen")},
    }


def tuned_config_text(rep: FitReport, holdout: float) -> str:
    """The tuned-config file's text: ``TUNED_HEADER``, then the document as YAML in document order."""
    return TUNED_HEADER + yaml.safe_dump(tuned_document(rep, holdout), sort_keys=False, width=120)


def write_tuned_config(path: Path, rep: FitReport, holdout: float) -> None:
    """Write the tuned-config file to ``path`` atomically (a reader never sees half a file).

    Args:
        path: the file to replace.
        rep: the fit and its held-out accuracy.
        holdout: the share of configurations that was held out.
    """
    write_text(path, tuned_config_text(rep, holdout))


def load_predictor(path: str | Path) -> EcoPred:
    """The predictor of a tuned-config file (as ``write_tuned_config`` writes it).

    Args:
        path: the tuned-config YAML.

    Raises:
        UserError: the file is missing, not YAML, not ``voltana.tuned/1``, or its predictor is malformed.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: no such file; write one with `voltana tune --fit-only --profile P --out {p}`") from None
    except IsADirectoryError:
        raise UserError(f"{p} is a directory: give the tuned-config YAML file", field="predictor") from None
    except OSError as exc:
        raise UserError(f"{p} cannot be read ({exc.strerror or exc})", field="predictor") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: not valid YAML ({exc.__class__.__name__}); regenerate it with `voltana tune --fit-only`") from None
    if not isinstance(raw, dict) or raw.get("schema") != TUNED_SCHEMA:
        got = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"{p}: schema {got!r} is not {TUNED_SCHEMA!r}; regenerate it with `voltana tune --fit-only`")
    return EcoPred.from_dict(raw.get("predictor"), str(p))
