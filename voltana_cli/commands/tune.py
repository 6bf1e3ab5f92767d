"""``voltana tune``: choose the feedback controller's and router's knobs by simulation (the default), or fit
EcoPred from a profile and report its held-out accuracy (``--fit-only``)."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from voltana_cli import __version__
from voltana_cli.commands import progress_bar, say_written, user_errors
from voltana_cli.core.bench import BenchConfig, make_config, parse_rates, prepare_bench
from voltana_cli.core.errors import UserError
from voltana_cli.core.models import defaults
from voltana_cli.core.profiling import Profile, load_profile
from voltana_cli.core.report import Timeline, check_outputs, pyplot, to_stdout, write_json, write_sweep_plot
from voltana_cli.core.tune import (
    FitReport,
    TuneOutcome,
    TuneSpec,
    accuracy_report,
    evaluate,
    policy_to_dict,
    run_tune,
    table_rows,
    tune_document,
    write_document,
    write_tuned_config,
)
from voltana_cli.core.workloads import ARRIVALS, DATASETS

FLAGS = {"request_rates": "--request-rate", "n_prefill": "--prefill", "n_decode": "--decode", "json": "--json",
         "plot": "--plot",
         "out": "--out", "target_attainment": "--target-attainment", "heldout_seeds": "--seeds",
         "train_seeds": "--train-seeds", "profile": "--profile", "prefill_router": "--prefill-router"}


def tune(
    fit_only: bool = typer.Option(False, "--fit-only", help="Only fit EcoPred from the profile and report its held-out "
                                  "accuracy (no controller or router tuning)."),
    profile_path: str | None = typer.Option(None, "--profile", help="Profile directory (profile.csv + metadata.yaml) "
                                            "or a shipped <gpu>/<model>: the simulated GPU's truth, and EcoPred is "
                                            "fitted from it. Default: the analytical model of --gpu x --model "
                                            f"(--fit-only: {defaults().gpu}/{defaults().model})."),
    gpu: str = typer.Option(defaults().gpu, help="GPU spec, without --profile."),
    model: str = typer.Option(defaults().model, help="Model spec, without --profile."),
    tp: int | None = typer.Option(None, help="Tensor parallelism per instance (default: the model's)."),
    prefill: int = typer.Option(2, help="Prefill instances."),
    decode: int = typer.Option(2, help="Decode instances."),
    dataset: str = typer.Option("sharegpt", help=f"Workload: {', '.join(sorted(DATASETS))} (as bench)."),
    dataset_path: Path | None = typer.Option(None, help="File for the dataset (as bench)."),
    arrival: str = typer.Option("auto", help=f"Arrival process: auto, {', '.join(ARRIVALS)} (as bench)."),
    burstiness: float = typer.Option(1.0, help="Gamma arrivals' shape (as bench)."),
    random_input_len: int = typer.Option(1024, help="--dataset random: the longest prompt (as bench)."),
    random_output_len: int = typer.Option(128, help="--dataset random: the longest output (as bench)."),
    random_range_ratio: float = typer.Option(0.5, help="--dataset random: the shortest length over the longest (as bench)."),
    duration_s: float = typer.Option(60.0, help="Seconds of arrivals per simulated run."),
    num_prompts: int | None = typer.Option(None, help="Requests per run instead of a duration."),
    request_rate: str = typer.Option("50:100:10", help="The rates to serve: START:STOP:STEP or one rate."),
    slo_ttft_ms: float | None = typer.Option(
        None, help="TTFT SLO (ms). Default: the model's (800 for Llama-3.1-8B, the paper's; spec data names each source)."),
    slo_itl_ms: float | None = typer.Option(None, help="ITL SLO (ms). Default: the model's (50 for Llama-3.1-8B)."),
    target_attainment: float = typer.Option(0.99, help="Joint SLO attainment asked at every rate (0-1]; a rate "
                                            "static-max cannot serve that well asks for what static-max keeps."),
    trials: int = typer.Option(40, help="Search trials (this worker's share of the study)."),
    seeds: int = typer.Option(2, "--seeds", help="Held-out traffic seeds the result is validated on."),
    train_seeds: int = typer.Option(2, help="Traffic seeds each trial is scored on."),
    seed: int = typer.Option(0, help="Seed of the search and the traffic (the same seed repeats a tune)."),
    storage: str | None = typer.Option(None, help="Study storage shared by workers: sqlite:///FILE.db, "
                                       "postgresql://..., mysql://... or journal:FILE (default: in memory)."),
    study_name: str | None = typer.Option(None, help="Study name in --storage (an existing one is resumed)."),
    jobs: int = typer.Option(1, help="Local worker processes sharing the search."),
    prefill_router: str | None = typer.Option(
        None, help="Router that picks each request's prefill instance for the reference policies (as bench; "
        "default random); voltana-tuned's is searched. The tuned config records it, and `serve --tuned` and "
        "`bench --tuned` route the other policies' prefill with it."),
    prediction_error: float = typer.Option(0.05, help="The analytical predictor's error, without --profile."),
    noise: float = typer.Option(0.02, help="Simulated GPU's per-iteration timing noise (lognormal sigma)."),
    out: Path | None = typer.Option(None, help="The tuned config to write (YAML; --fit-only: the predictor)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the validation runs (bench schema) or, with "
                                          "--fit-only, the accuracy figures here."),
    plot_path: Path | None = typer.Option(None, "--plot", help="Write a PNG: energy and attainment vs rate per "
                                          "policy on the held-out seeds, and a clock timeline of voltana-tuned "
                                          "(one prefill and one decode instance) at the held-out rate."),
    holdout: float = typer.Option(0.2, help="--fit-only: fraction of configurations held out."),
    compare_gbt: bool = typer.Option(True, "--compare-gbt/--no-compare-gbt",
                                     help="--fit-only: also score gradient-boosted trees on the same held-out rows."),
) -> None:
    """Tune the feedback controller and router by simulation (or, with --fit-only, fit EcoPred)."""
    piped = to_stdout(out) or to_stdout(json_path) or to_stdout(plot_path)
    console = Console(stderr=True) if piped else Console(width=None if sys.stdout.isatty() else 160)
    with user_errors(FLAGS):
        check_outputs({"out": out, "json": json_path, "plot": plot_path})
        if plot_path is not None and not to_stdout(plot_path) and plot_path.suffix.lower() != ".png":
            raise UserError(f"--plot {plot_path}: give a .png path")
        if plot_path is not None:
            pyplot()  # a missing plotting library is said before any work or output
        if fit_only:
            if plot_path is not None:
                raise UserError("--plot draws a tune's validation; --fit-only has none to draw", field="plot")
            _fit_only(console, profile_path or f"{defaults().gpu}/{defaults().model}", out, json_path, holdout, seed,
                      compare_gbt)
            return
        if out is None:
            raise UserError("give the tuned config's path (e.g. --out tuned.yaml)", field="out")
        spec = TuneSpec(parse_rates(request_rate), target_attainment, trials, seed, train_seeds, seeds, storage,
                        study_name, jobs)
        spec.check()
        cfg = make_config(dataset=dataset, dataset_path=dataset_path, request_rates=spec.rates,
                          duration_s=None if num_prompts is not None else duration_s, num_prompts=num_prompts,
                          arrival=arrival, burstiness=burstiness, random_input_len=random_input_len,
                          random_output_len=random_output_len, random_range_ratio=random_range_ratio,
                          seed=seed, gpu=gpu, model=model, tp=tp,
                          n_prefill=prefill, n_decode=decode, policies=["static-max"], slo_ttft_ms=slo_ttft_ms,
                          slo_itl_ms=slo_itl_ms, prediction_error=prediction_error, noise=noise,
                          profile=profile_path, prefill_router=prefill_router)
        _tune(console, spec, cfg, profile_path, holdout, seed, out, json_path, plot_path)


def _tune(console: Console, spec: TuneSpec, cfg: BenchConfig, profile_path: str | None, holdout: float, seed: int,
          out: Path, json_path: Path | None, plot_path: Path | None) -> None:
    """The full tune: fit EcoPred when a profile is the truth, search, validate, render, write."""
    fit, prof = None, None
    if profile_path is not None:
        prof = load_profile(profile_path)
        cfg = make_config(**{**cfg.model_dump(), "gpu": prof.meta.gpu, "model": prof.meta.model})
        fit = (evaluate(prof, holdout=holdout, seed=seed, compare_gbt=False), holdout)
    prep = prepare_bench(cfg)
    cfg = prep.cfg  # the SLOs resolved (a model's defaults when not given)
    if fit is not None:
        prep.scenario.fitted = fit[0].predictor
    t0 = time.perf_counter()
    outcome = _run_with_progress(prep.scenario, spec)
    elapsed = time.perf_counter() - t0
    rows = table_rows(outcome)
    render_tune(console, outcome, rows, cfg.model_dump(), elapsed)
    prov = _provenance(cfg.model_dump(), prep.model.tp, spec, profile_path, prof, elapsed)
    if outcome.study.tuned is None:
        raise UserError(f"no trial met every rate's requirement in {outcome.study.trials} trials: give more "
                        "--trials, fewer or lower rates, or a lower --target-attainment; nothing was written")
    write_document(out, tune_document(outcome.study.tuned, prov, _validation(outcome, rows), fit))
    if json_path is not None:
        write_json(json_path, {"voltana_version": __version__, "config": prov, "runs": outcome.runs})
    if plot_path is not None:
        _plot(plot_path, prep.scenario, spec, outcome, rows, cfg)
    say_written(console, out, json_path, plot_path)


def _plot(path: Path, scn: Any, spec: TuneSpec, outcome: TuneOutcome, rows: list[dict[str, Any]],
          cfg: BenchConfig) -> None:
    """The validation per rate (means over the held-out seeds) and voltana-tuned's clock timeline at the
    held-out rate (else the middle rate) on the first held-out seed."""
    sweep = {"config": cfg.model_dump(mode="json"),
             "runs": [{"request_rate": r["request_rate"], "policy": r["policy"], "energy_j": {"total": r["energy_j"]},
                       "attainment": {"ttft": r["ttft"], "itl": r["itl"]}} for r in rows]}
    rates = sorted(spec.rates)
    rate = outcome.heldout_rate if outcome.heldout_rate is not None else rates[(len(rates) - 1) // 2]
    seed = spec.heldout[0]
    label = f"voltana-tuned at {rate:g} req/s, held-out seed {seed}"
    write_sweep_plot(path, sweep, Timeline(label, scn.timeline("voltana-tuned", rate, seed, outcome.study.tuned)))


def _fit_only(console: Console, profile_path: str, out: Path | None, json_path: Path | None, holdout: float,
              seed: int, compare_gbt: bool) -> None:
    prof = load_profile(profile_path)
    rep = evaluate(prof, holdout=holdout, seed=seed, compare_gbt=compare_gbt)
    render(console, rep, prof.source)
    if out is not None:
        write_tuned_config(out, rep, holdout)
    if json_path is not None:
        write_json(json_path, accuracy_report(rep, holdout))
    say_written(console, out, json_path)


def _run_with_progress(scn: Any, spec: TuneSpec) -> TuneOutcome:
    with progress_bar(Console(stderr=True)) as prog:
        task = prog.add_task("tuning", total=spec.trials)

        def on_trial(done: int, best: float | None) -> None:
            best_txt = "none feasible yet" if best is None else f"best feasible energy {100 * best:.1f} % of static-max"
            prog.update(task, completed=min(done, spec.trials), description=f"tuning: {best_txt}")

        def step(label: str) -> None:
            prog.update(task, description=label)

        return run_tune(scn, spec, progress=step, on_trial=on_trial)


def _provenance(cfg: dict[str, Any], tp: int, spec: TuneSpec, profile_path: str | None, prof: Profile | None,
                elapsed: float) -> dict[str, Any]:
    digest = None
    if prof is not None:
        digest = "sha256:" + hashlib.sha256(Path(prof.source, "profile.csv").read_bytes()).hexdigest()
    return {
        "voltana_version": __version__, "gpu": cfg["gpu"], "model": cfg["model"], "tp": tp,
        "layout": f"{cfg['n_prefill']}P{cfg['n_decode']}D", "profile": profile_path, "profile_digest": digest,
        "workload": {k: (str(cfg[k]) if k == "dataset_path" and cfg[k] is not None else cfg[k])
                     for k in ("dataset", "dataset_path", "arrival", "burstiness", "duration_s", "num_prompts",
                               *(("random_input_len", "random_output_len", "random_range_ratio")
                                 if cfg["dataset"] == "random" else ()))},
        "slo_ttft_ms": cfg["slo_ttft_ms"], "slo_itl_ms": cfg["slo_itl_ms"], "target_attainment": spec.target,
        "request_rates": spec.rates, "seed": spec.seed, "trials": spec.trials, "jobs": spec.jobs,
        "train_seeds": spec.training, "heldout_seeds": spec.heldout, "heldout_rate": spec.heldout_rate(),
        "storage": spec.storage, "study_name": spec.study_name, "predictor": "EcoPred fitted from the profile"
        if profile_path else f"analytical model with ±{cfg['prediction_error']:g} error",
        "noise": cfg["noise"], "prefill_router": cfg["prefill_router"], "tune_seconds": round(elapsed, 1),
    }


def _validation(outcome: TuneOutcome, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "heldout_rate": outcome.heldout_rate,
        "trials": outcome.study.trials, "feasible_trials": outcome.study.feasible,
        "search_value": outcome.study.value,
        "rows": [{k: r[k] for k in ("request_rate", "policy", "energy_j", "saving_vs_static_max", "both",
                                    "requirement", "meets", "ran_as")} for r in rows],
    }


def render_tune(console: Console, outcome: TuneOutcome, rows: list[dict[str, Any]], cfg: dict[str, Any],
                elapsed: float) -> None:
    """The before/after table per rate (``rows``: means over the held-out seeds) and the knobs chosen."""
    st = outcome.study
    console.print(f"[bold]voltana tune[/] {cfg['n_prefill']}P{cfg['n_decode']}D {cfg['gpu']} x {cfg['model']}: "
                  f"{st.trials} trials ({st.feasible} feasible) in {elapsed:.0f} s; validated on held-out seeds"
                  + (f" and the held-out rate {outcome.heldout_rate:g} req/s" if outcome.heldout_rate else ""))
    table = Table()
    for col in ("req/s", "policy", "energy (J)", "saving vs static-max", "TTFT att", "ITL att", "both att",
                "required", "meets", "note"):
        table.add_column(col, justify="left" if col in ("policy", "note") else "right")
    for r in rows:
        note = "yardstick (reads the truth)" if r["yardstick"] else (r["ran_as"] or "")
        if r["request_rate"] in outcome.infeasible_rates and r["policy"] == "static-max":
            note = "below target even at max clock: requirement = static-max's - 1 pt"
        table.add_row(f"{r['request_rate']:g}", r["policy"], f"{r['energy_j']:,.0f}",
                      f"{100 * r['saving_vs_static_max']:.1f} %", f"{100 * r['ttft']:.1f} %", f"{100 * r['itl']:.1f} %",
                      f"{100 * r['both']:.1f} %", f"{100 * r['requirement']:.1f} %", "yes" if r["meets"] else "NO",
                      note)
    console.print(table)
    if st.tuned is not None:
        console.print(f"tuned knobs: {policy_to_dict(st.tuned)}", soft_wrap=True)


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
