"""The tuned-config file and its one loader.

Schema ``voltana.tuned/3`` has optional sections: ``predictor`` (an EcoPred, ``voltana.ecopred/1``, with its
held-out ``accuracy``; what ``tune --fit-only`` writes), ``policy`` (the feedback controller's and router's
knobs that ``voltana tune`` chose) and ``validation`` (how the knobs did on held-out seeds), plus
``provenance`` (voltana version, GPU, model, TP, layout, profile digest, workload, SLOs, target, seed,
trials). ``voltana bench --tuned`` and ``voltana serve --tuned`` read it through ``load_tuned``; files of the
earlier schemas still load: ``voltana.tuned/1`` (a predictor only) and ``voltana.tuned/2`` (its policy has
no ``prefill_router``: ``voltana-tuned`` routes prefill like every other policy of the run). The third
schema exists because an older voltana would read a ``prefill_router`` it does not know as absent and route
the tuned knobs' prefill otherwise than they were tuned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from voltana_cli import __version__
from voltana_cli.core.errors import UserError
from voltana_cli.core.models.ecopred import EcoPred
from voltana_cli.core.policy import DEFAULT_PREFILL_ROUTER, REGISTRY
from voltana_cli.core.policy.feedback import FeedbackParams, TunedPolicy
from voltana_cli.core.report import write_text
from voltana_cli.core.tune.fitonly import FitReport

TUNED_SCHEMA = "voltana.tuned/3"
#: Schemas ``load_tuned`` reads (the first carried a predictor only; the second, no prefill router).
READABLE_SCHEMAS = ("voltana.tuned/1", "voltana.tuned/2", TUNED_SCHEMA)
#: The comment that opens a tuned-config file, so a reader knows the shape of the lines without the README.
TUNED_HEADER = (
    "# voltana tuned config: EcoPred predictors (`voltana tune --fit-only`) and/or the feedback controller's and\n"
    "# router's knobs (`voltana tune`).\n"
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


def tune_document(policy: TunedPolicy, provenance: dict[str, Any], validation: dict[str, Any],
                  fit: tuple[FitReport, float] | None = None) -> dict[str, Any]:
    """The document ``voltana tune`` writes: provenance, the predictor it tuned with (when fitted from a
    profile, with its held-out accuracy), the chosen knobs and their validation."""
    doc: dict[str, Any] = {"schema": TUNED_SCHEMA, "provenance": provenance}
    if fit is not None:
        fitted = tuned_document(*fit)
        doc["predictor"], doc["accuracy"] = fitted["predictor"], fitted["accuracy"]
    doc["policy"] = policy_to_dict(policy)
    doc["validation"] = validation
    return doc


def write_document(path: Path, doc: dict[str, Any]) -> None:
    """Write a tuned-config document atomically, under ``TUNED_HEADER``."""
    write_text(path, TUNED_HEADER + yaml.safe_dump(doc, sort_keys=False, width=120))


def write_tuned_config(path: Path, rep: FitReport, holdout: float) -> None:
    """Write the tuned-config file to ``path`` atomically (a reader never sees half a file).

    Args:
        path: the file to replace.
        rep: the fit and its held-out accuracy.
        holdout: the share of configurations that was held out.
    """
    write_text(path, tuned_config_text(rep, holdout))


@dataclass
class TunedConfig:
    """A loaded tuned-config file: each section, or ``None`` where the file has none."""

    path: str
    schema: str
    predictor: EcoPred | None
    policy: TunedPolicy | None
    provenance: dict[str, Any]

    @property
    def prefill_router(self) -> str:
        """The router that picked prefill instances while the knobs were tuned and validated (files written
        before it was recorded: the default, random, what every tune ran with then)."""
        return str(self.provenance.get("prefill_router") or DEFAULT_PREFILL_ROUTER)


def policy_to_dict(tuned: TunedPolicy) -> dict[str, Any]:
    """The ``policy`` section: every knob in plain numbers."""
    out = {"prefill": asdict(tuned.prefill), "decode": asdict(tuned.decode), "router": tuned.router,
           "router_headroom": tuned.router_headroom}
    if tuned.prefill_router is not None:
        out["prefill_router"] = tuned.prefill_router
    return out


def policy_from_dict(raw: Any, where: str) -> TunedPolicy:
    """The knobs of a ``policy`` section; unknown, missing or out-of-range knobs are one line naming them."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: the policy section must be a mapping, not a {type(raw).__name__}")
    known = {f.name for f in fields(FeedbackParams)}
    phases = {}
    for phase in ("prefill", "decode"):
        part = raw.get(phase)
        if not isinstance(part, dict):
            raise UserError(f"{where}: policy.{phase} is missing or not a mapping; rerun `voltana tune`")
        bad = sorted(set(part) - known)
        if bad:
            raise UserError(f"{where}: policy.{phase}.{bad[0]} is not a knob of the feedback controller")
        try:
            params = FeedbackParams(**{k: type(getattr(FeedbackParams(), k))(v) for k, v in part.items()})
            params.check()
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: policy.{phase}: {exc}") from None
        phases[phase] = params
    router, headroom = raw.get("router", "predictive"), raw.get("router_headroom", 0.1)
    if not isinstance(router, str) or not isinstance(headroom, (int, float)) or not 0 <= headroom < 1:
        raise UserError(f"{where}: policy.router must be a router's name and router_headroom a number in [0, 1)")
    prefill_router = _prefill_router(raw.get("prefill_router"), f"{where}: policy.prefill_router")
    return TunedPolicy(phases["prefill"], phases["decode"], router, float(headroom), prefill_router)


def _prefill_router(name: object, what: str) -> str | None:
    """``name`` if it names a concrete router (not ``tuned``, which stands for a tuned config's own), or None.

    Raises:
        UserError: it names none.
    """
    if name is not None and (not isinstance(name, str) or name == "tuned" or REGISTRY.router(name) is None):
        names = ", ".join(e.name for e in REGISTRY.routers() if e.name != "tuned")
        raise UserError(f"{what} {name!r} is not one of {names}; regenerate it with `voltana tune`")
    return name


def _read_yaml(p: Path) -> Any:
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: no such file; write one with `voltana tune` (or `voltana tune --fit-only`)",
                        field="tuned") from None
    except IsADirectoryError:
        raise UserError(f"{p} is a directory: give the tuned-config YAML file", field="tuned") from None
    except OSError as exc:
        raise UserError(f"{p} cannot be read ({exc.strerror or exc})", field="tuned") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: not valid YAML ({exc.__class__.__name__}); regenerate it with `voltana tune`") from None


def load_tuned(path: str | Path) -> TunedConfig:
    """Read a tuned-config file of any readable schema.

    Raises:
        UserError: the file is missing, not YAML, of another schema, or a section is malformed.
    """
    p = Path(path)
    raw = _read_yaml(p)
    got = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
    if not isinstance(raw, dict) or got not in READABLE_SCHEMAS:
        raise UserError(f"{p}: schema {got!r} is not {TUNED_SCHEMA!r}; regenerate it with `voltana tune`")
    pred = EcoPred.from_dict(raw["predictor"], str(p)) if raw.get("predictor") is not None else None
    policy = policy_from_dict(raw["policy"], str(p)) if raw.get("policy") is not None else None
    prov = raw.get("provenance") or {}
    if not isinstance(prov, dict):
        raise UserError(f"{p}: provenance must be a mapping")
    _prefill_router(prov.get("prefill_router"), f"{p}: prefill_router")
    if pred is None and policy is None:
        raise UserError(f"{p}: has neither a predictor nor a policy section; regenerate it with `voltana tune`")
    return TunedConfig(str(p), str(got), pred, policy, prov)


def load_predictor(path: str | Path) -> EcoPred:
    """The predictor of a tuned-config file.

    Raises:
        UserError: as ``load_tuned``, or the file has no predictor section.
    """
    try:
        cfg = load_tuned(path)
    except UserError as exc:
        raise UserError(exc.problem, field="predictor" if exc.field == "tuned" else exc.field) from None
    if cfg.predictor is None:
        raise UserError(f"{path}: has no predictor section (it was tuned on the analytical model); give a file "
                        "written by `voltana tune --fit-only` or by `voltana tune --profile`", field="predictor")
    return cfg.predictor
