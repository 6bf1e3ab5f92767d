"""``voltana tune``: fit EcoPred from a profile and report its held-out accuracy (``--fit-only``)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from voltana_cli.commands import user_errors
from voltana_cli.core.errors import UserError
from voltana_cli.core.models import defaults
from voltana_cli.core.profiling import load_profile
from voltana_cli.core.report import check_outputs, to_stdout, write_json
from voltana_cli.core.tune import FitReport, accuracy_report, evaluate, write_tuned_config


def tune(
    fit_only: bool = typer.Option(False, "--fit-only", help="Fit the predictors and report their accuracy; no "
                                  "controller/router tuning (which arrives in a later version)."),
    profile_path: str = typer.Option(f"{defaults().gpu}/{defaults().model}", "--profile",
                                     help="Profile directory (profile.csv + metadata.yaml) or a shipped <gpu>/<model>."),
    out: Path | None = typer.Option(None, help="Write the fitted predictor to this tuned-config YAML."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the accuracy figures as JSON here."),
    holdout: float = typer.Option(0.2, help="Fraction of configurations held out to measure accuracy."),
    seed: int = typer.Option(0, help="Seed of the held-out split."),
    compare_gbt: bool = typer.Option(True, "--compare-gbt/--no-compare-gbt",
                                     help="Also score gradient-boosted trees on the same held-out rows."),
) -> None:
    """Fit EcoPred latency/energy predictors from a profile; print held-out MAE, MAPE and R² per phase and clock."""
    # A result sent to standard output (``-``) owns it: the table goes to standard error then.
    piped = to_stdout(out) or to_stdout(json_path)
    console = Console(stderr=True) if piped else Console(width=None if sys.stdout.isatty() else 140)
    with user_errors():
        if not fit_only:
            raise UserError("only --fit-only is available in this version: voltana tune --fit-only --profile P "
                            "[--out tuned.yaml]; controller and router auto-tuning arrive in a later version")
        check_outputs({"out": out, "json": json_path})
        prof = load_profile(profile_path)
        rep = evaluate(prof, holdout=holdout, seed=seed, compare_gbt=compare_gbt)
        render(console, rep, prof.source)
        if out is not None:
            write_tuned_config(out, rep, holdout)
        if json_path is not None:
            write_json(json_path, accuracy_report(rep, holdout))
        for path in (out, json_path):
            if path is not None and not to_stdout(path):
                console.print(f"wrote {path}")


def render(console: Console, rep: FitReport, source: str) -> None:
    """Print the held-out accuracy table, the decode steps found and the families compared.

    Args:
        console: where to print.
        rep: the fit and its held-out accuracy.
        source: the profile it was fitted on, as the user named it.
    """
    console.print(f"[bold]voltana tune --fit-only[/] {source}: EcoPred fitted in {rep.fit_seconds:.1f} s; "
                  "accuracy on held-out configurations (every repeat of a held-out configuration left out)")
    table = Table()
    for col in ("phase", "clock MHz", "n", "MAE ms", "MAPE %", "R²", "energy MAPE %"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for phase in ("prefill", "decode"):
        for clock, m in rep.accuracy.get(phase, {}).items():
            e = (rep.energy_accuracy or {}).get(phase, {}).get(clock)
            table.add_row(phase, clock, str(m["n"]), f"{m['mae_ms']:.3f}", f"{m['mape_pct']:.2f}", f"{m['r2']:.4f}",
                          "unavailable" if e is None else f"{e['mape_pct']:.2f}")
    console.print(table)
    steps = rep.predictor.info.get("steps", [])
    console.print("decode steps found: " + (", ".join(f"{s['after_batch']}→{s['after_batch'] + 1} "
                                                      f"(+{s['jump_ms']:.2f} ms, {100 * s['rel']:.1f} %)" for s in steps)
                                           or "none"))
    fam = "; ".join(
        f"{name}: " + ", ".join(f"{ph} worst {v['worst_mape_pct']:.2f} %" for ph, v in figs.items())
        for name, figs in rep.families.items()
    )
    console.print(f"families (held-out MAPE, worst clock): {fam}. Chosen: {rep.chosen} "
                  "(gradient-boosted trees are scored for comparison only: a call costs tens of µs against "
                  "the 5 µs budget and they do not serialise to a readable file).")
