"""``voltana bench``: replay a workload on a simulated P/D cluster and report energy and SLO attainment."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from voltana_cli.commands import flag_for, progress_bar, say_written, user_errors
from voltana_cli.core.bench import (
    DEFAULT_POLICIES,
    BenchOutput,
    PreparedBench,
    bench_timeline,
    make_config,
    parse_rates,
    per_request_frame,
    prepare_bench,
    run_bench_full,
)
from voltana_cli.core.errors import UserError
from voltana_cli.core.metrics import ITL_RULE
from voltana_cli.core.models import defaults
from voltana_cli.core.policy import REGISTRY
from voltana_cli.core.report import check_outputs, pyplot, to_stdout, write_csv, write_json, write_sweep_plot
from voltana_cli.core.workloads import ARRIVALS, DATASETS

ROUTERS = ", ".join(e.name for e in REGISTRY.routers())

#: Core fields whose flag is not ``--field-name``.
FLAGS = {
    "request_rates": "--request-rate", "n_prefill": "--prefill", "n_decode": "--decode", "policies": "--policy",
    "ecofreq_clocks_mhz": "--ecofreq-clocks", "json": "--json", "csv": "--csv", "plot": "--plot",
    "workload": "--request-rate/--duration-s/--num-prompts", "profile": "--profile", "predictor": "--predictor",
    "tuned": "--tuned", "engine": "--engine-spec",
}


def bench(
    ctx: typer.Context,
    dataset: str = typer.Option("sharegpt", help=f"Workload: {', '.join(sorted(DATASETS))}."),
    dataset_path: Path | None = typer.Option(
        None, help="File for the dataset: a ShareGPT JSON (or token CSV), an Azure trace CSV, or a CSV of "
        "input_tokens,output_tokens[,arrival_s] for --dataset csv."),
    tokenizer: str = typer.Option("llama3", help="Tokenizer for a ShareGPT JSON: a quicktok encoding "
                                  "(llama3, qwen3, ...) or a tokenizer.json path."),
    request_rate: str = typer.Option("60", help="Requests per second, or START:STOP:STEP for a sweep (inclusive)."),
    duration_s: float = typer.Option(120.0, help="Seconds of arrivals (ignored with --num-prompts)."),
    num_prompts: int | None = typer.Option(None, help="Number of requests instead of a duration."),
    random_input_len: int = typer.Option(1024, help="--dataset random: the longest prompt (tokens)."),
    random_output_len: int = typer.Option(128, help="--dataset random: the longest output (tokens)."),
    random_range_ratio: float = typer.Option(0.5, help="--dataset random: the shortest length as a fraction of the "
                                             "longest (lengths are drawn uniformly between)."),
    arrival: str = typer.Option("auto", help=f"Arrival process: auto, {', '.join(ARRIVALS)} "
                                "(auto: trace timestamps for timestamped traces, else poisson)."),
    burstiness: float = typer.Option(1.0, help="Gamma arrivals' shape: 1 = Poisson, < 1 burstier."),
    seed: int = typer.Option(0, help="Seed of the workload, noise and prediction errors."),
    gpu: str = typer.Option(defaults().gpu, help="GPU spec (voltana_cli/data/gpus)."),
    model: str = typer.Option(defaults().model, help="Model spec (voltana_cli/data/models)."),
    tp: int | None = typer.Option(None, help="Tensor parallelism per instance (default: the model's)."),
    prefill: int = typer.Option(2, help="Prefill instances."),
    decode: int = typer.Option(2, help="Decode instances."),
    policy: list[str] | None = typer.Option(
        None, help=f"Policy, repeatable: {REGISTRY.help_text()} Default: {', '.join(DEFAULT_POLICIES)}."),
    prefill_router: str | None = typer.Option(
        None, help="Router that picks each request's prefill instance: "
        f"{ROUTERS}. Default: the one --tuned was tuned with, else random (as the paper's reference load "
        "balancer does)."),
    slo_ttft_ms: float | None = typer.Option(
        None, help="TTFT SLO (ms). Default: the model's (800 for Llama-3.1-8B, the paper's; spec data names each source)."),
    slo_itl_ms: float | None = typer.Option(None, help="ITL SLO (ms). Default: the model's (50 for Llama-3.1-8B)."),
    ecofreq_margin: float | None = typer.Option(
        None, help="EcoFreq margin for both phases: the target is SLO x (1 + margin). Default: the targets of the "
        "paper's run scripts, 0.5625 x the TTFT SLO for prefill and 0.9 x the ITL SLO for decode."),
    engine_spec: str = typer.Option(
        "sglang", help="Serving engine spec: sglang (stock SGLang's defaults) or sglang-voltanallm-testbed (the "
        "paper's server flags: 16k prefill chunks, no overlap, fake KV transfer)."),
    ecofreq_clocks: str | None = typer.Option(
        None, help="EcoFreq clock levels in MHz, comma-separated (default: the GPU's two from its spec, "
        "the paper's 1005,1410 on A100)."),
    prediction_error: float = typer.Option(0.05, help="Controller's prediction error, a fraction (0.05 = ±5 %)."),
    noise: float = typer.Option(0.02, help="Simulated GPU's per-iteration timing noise (lognormal sigma)."),
    profile: str | None = typer.Option(None, help="Use this profile (directory, or shipped <gpu>/<model>) as the simulated "
                                       "GPU's ground truth instead of the analytical model."),
    predictor: Path | None = typer.Option(None, help="EcoFreq predicts with the EcoPred in this tuned config "
                                          "(`voltana tune --fit-only --out`) instead of the model with --prediction-error."),
    tuned: Path | None = typer.Option(None, help="A tuned config from `voltana tune`: adds the voltana-tuned policy "
                                      "with its knobs (and its predictor, when it has one)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write one row per request per run here."),
    plot_path: Path | None = typer.Option(None, "--plot", help="Write a PNG of energy and attainment vs rate, "
                                         "and a clock timeline of one run (one prefill and one decode instance)."),
    url: str | None = typer.Option(None, help="Replay against a live cluster: the URL of its voltana router "
                                   "(voltana serve). Same workloads, options and JSON as the simulated bench."),
    admin_token: str | None = typer.Option(None, envvar="VOLTANA_ADMIN_TOKEN", help="With --url and --policy: the "
                                           "router's admin token (env VOLTANA_ADMIN_TOKEN), to set each policy."),
    api_key: str | None = typer.Option(None, envvar="VOLTANA_API_KEY", help="With --url: the router's API key "
                                       "(env VOLTANA_API_KEY), when it asks for one."),
) -> None:
    """Replay a workload on a simulated P/D cluster and report energy and SLO attainment per policy."""
    if url is not None:
        _live(ctx, url, admin_token, api_key, json_path, csv_path, plot_path)
        return
    # A result sent to standard output (``-``) owns it: the table and the notes go to standard error then.
    piped = any(to_stdout(p) for p in (json_path, csv_path, plot_path))
    console = Console(stderr=True) if piped else Console(width=None if sys.stdout.isatty() else 170)
    with user_errors(FLAGS):
        rates = parse_rates(request_rate)
        check_outputs({"json": json_path, "csv": csv_path, "plot": plot_path})
        if plot_path is not None and not to_stdout(plot_path) and plot_path.suffix.lower() != ".png":
            raise UserError(f"--plot {plot_path}: give a .png path")
        if plot_path is not None:
            pyplot()  # a missing plotting library is said before any work or output
        clocks = _parse_clocks(ecofreq_clocks) if ecofreq_clocks is not None else None
        cfg = make_config(
            dataset=dataset, dataset_path=dataset_path, tokenizer=tokenizer, request_rates=rates,
            duration_s=None if num_prompts is not None else duration_s, num_prompts=num_prompts, arrival=arrival,
            burstiness=burstiness, seed=seed, random_input_len=random_input_len, random_output_len=random_output_len,
            random_range_ratio=random_range_ratio,
            gpu=gpu, model=model, tp=tp, engine=engine_spec, n_prefill=prefill, n_decode=decode,
            policies=_policies(policy, tuned), prefill_router=prefill_router, tuned=tuned,
            slo_ttft_ms=slo_ttft_ms,
            slo_itl_ms=slo_itl_ms, ecofreq_margin=ecofreq_margin, ecofreq_clocks_mhz=clocks,
            prediction_error=prediction_error, noise=noise, profile=profile, predictor=predictor,
        )
        prepared = prepare_bench(cfg)
        out = _simulate_with_progress(prepared, len(rates) * len(cfg.policies))
        for note in out.notes:
            Console(stderr=True).print(f"note: {note}", highlight=False, soft_wrap=True)
        _render(console, out.report)
        writers: list[tuple[Path | None, Callable[[Path], None]]] = [
            (json_path, lambda p: write_json(p, out.report)),
            (csv_path, lambda p: write_csv(p, per_request_frame(out.runs))),
            (plot_path, lambda p: write_sweep_plot(p, out.report, bench_timeline(prepared, out.report))),
        ]
        for path, write in writers:
            if path is not None:
                write(path)
                say_written(console, path)


def _simulate_with_progress(prepared: PreparedBench, n_runs: int) -> BenchOutput:
    """``run_bench_full`` with a progress bar on standard error (runs done of ``n_runs``)."""
    with progress_bar(Console(stderr=True)) as prog:
        task = prog.add_task("simulating", total=n_runs)

        def step(label: str) -> None:
            prog.update(task, description=f"simulating {label}")
            prog.advance(task)

        return run_bench_full(prepared, progress=step)


def _policies(given: list[str] | None, tuned: Path | None) -> list[str]:
    """The policies to run: the given ones, else the defaults; ``--tuned`` adds ``voltana-tuned``."""
    names = list(given) if given else list(DEFAULT_POLICIES)
    if tuned is not None and not any(n.split("+")[0] == "voltana-tuned" for n in names):
        names.append("voltana-tuned")
    return names


def _parse_clocks(text: str) -> list[int]:
    try:
        clocks = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--ecofreq-clocks {text!r}: give MHz values separated by commas, e.g. 1005,1410") from None
    if not clocks:
        raise UserError("--ecofreq-clocks is empty: give MHz values separated by commas, e.g. 1005,1410")
    return clocks


def _margins(cfg: dict) -> str:
    m = cfg.get("ecofreq_margins") or {}
    return ", ".join(f"{ph} {m[ph]:+g}" for ph in ("prefill", "decode") if ph in m) or "n/a"


def _fmt(x: float | None, spec: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def _render(console: Console, report: dict) -> None:
    cfg = report["config"]
    span = f"{cfg['num_prompts']} requests" if cfg["num_prompts"] else f"{cfg['duration_s']:g} s"
    console.print(
        f"[bold]voltana bench[/] {'(live: ' + cfg['url'] + ')' if cfg['backend'] == 'live' else '(simulated)'} "
        f"{cfg['n_prefill']}P{cfg['n_decode']}D {cfg['gpu']} x TP{cfg['tp']}, "
        f"{cfg['model']}, {cfg['dataset_name']}, {cfg['arrival']} arrivals, "
        f"{span}, seed {cfg['seed']}"
    )
    console.print(
        f"SLOs: TTFT {cfg['slo_ttft_ms']:g} ms, ITL {cfg['slo_itl_ms']:g} ms. ITL rule: {ITL_RULE}. "
        f"EcoFreq levels {cfg['ecofreq_clocks_mhz']} MHz, margins {_margins(cfg)}."
    )
    table = Table(show_lines=False)
    for col, just in [
        ("req/s", "right"), ("policy", "left"), ("energy (J)", "right"), ("saving vs static-max", "right"),
        ("J/out tok", "right"), ("TTFT att", "right"), ("ITL att", "right"), ("both att", "right"),
        ("TTFT p50/p99 ms", "right"), ("ITL p50/p99 ms", "right"), ("req/s out", "right"), ("tok/s out", "right"),
    ]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in report["runs"]:
        a = r["attainment"]
        sav = r.get("saving_vs_static_max")
        table.add_row(
            f"{r['request_rate']:g}", r["policy"] + (f" ({r['ran_as']})" if "ran_as" in r else "")
            + (" [yardstick: reads the truth]" if r.get("yardstick") else ""),
            f"{r['energy_j']['total']:,.0f}",
            "-" if sav is None else f"{100 * sav:.1f} %", f"{r['joules_per_output_token']:.3f}",
            f"{100 * a['ttft']:.1f} %", f"{100 * a['itl']:.1f} %", f"{100 * a['both']:.1f} %",
            f"{_fmt(r['ttft_ms']['p50'], '.0f')} / {_fmt(r['ttft_ms']['p99'], '.0f')}",
            f"{_fmt(r['itl_ms']['p50'], '.1f')} / {_fmt(r['itl_ms']['p99'], '.1f')}",
            f"{r['throughput']['requests_per_s']:.1f}", f"{r['throughput']['output_tokens_per_s']:,.0f}",
        )
    console.print(table)


#: Options that shape the simulated world only: given with --url they are refused, not ignored.
SIM_ONLY = ("noise", "profile", "predictor", "prediction_error", "tuned", "prefill", "decode", "prefill_router",
            "ecofreq_margin", "ecofreq_clocks", "gpu", "model", "tp", "engine_spec")


def _live(ctx: typer.Context, url: str, admin_token: str | None, api_key: str | None, json_path: Path | None,
          csv_path: Path | None, plot_path: Path | None) -> None:
    """``bench --url``: the same workload recipe, run against the live cluster's router."""
    from voltana_cli.core.live import run_live_bench

    p = ctx.params
    piped = any(to_stdout(x) for x in (json_path, csv_path))
    console = Console(stderr=True) if piped else Console(width=None if sys.stdout.isatty() else 170)
    with user_errors({**FLAGS, "url": "--url", "admin_token": "--admin-token"}):
        # By name: typer may vendor its own click, whose ParameterSource is not ``click.core``'s.
        given = [n for n in SIM_ONLY if getattr(ctx.get_parameter_source(n), "name", "") in ("COMMANDLINE", "ENVIRONMENT")]
        if given:
            raise UserError(f"{flag_for(given[0], FLAGS)} shapes the simulated world; a live cluster is what it is "
                            "(its shape and clocks are the server's): leave it out with --url", field=None)
        if plot_path is not None:
            raise UserError("--plot draws simulated runs; with --url, write --json and --csv", field="plot")
        if not url.startswith(("http://", "https://")):
            raise UserError(f"{url!r} is not an http(s) URL of a voltana router, e.g. http://127.0.0.1:8000",
                            field="url")
        check_outputs({"json": json_path, "csv": csv_path, "plot": None})
        cluster = _cluster_of(url)
        cfg = make_config(
            dataset=p["dataset"], dataset_path=p["dataset_path"], tokenizer=p["tokenizer"],
            request_rates=parse_rates(p["request_rate"]), duration_s=None if p["num_prompts"] is not None
            else p["duration_s"], num_prompts=p["num_prompts"], arrival=p["arrival"], burstiness=p["burstiness"],
            random_input_len=p["random_input_len"], random_output_len=p["random_output_len"],
            random_range_ratio=p["random_range_ratio"],
            seed=p["seed"], gpu=cluster["gpu"], model=cluster["model"], policies=list(p["policy"] or ["static-max"]),
            slo_ttft_ms=p["slo_ttft_ms"], slo_itl_ms=p["slo_itl_ms"],
            n_prefill=sum(1 for i in cluster["instances"] if i["role"] == "prefill"),
            n_decode=sum(1 for i in cluster["instances"] if i["role"] == "decode"),
        )
        prepared = prepare_bench(cfg)
        done: list = []
        try:
            run_live_bench(prepared, url, list(p["policy"]) if p["policy"] else None, admin_token, api_key, done,
                           progress=lambda msg: Console(stderr=True).print(f"live: {msg}", highlight=False))
        except KeyboardInterrupt:
            _write_live(console, prepared, url, done, json_path, csv_path, partial=True)
            raise
        _write_live(console, prepared, url, done, json_path, csv_path, partial=False)


def _cluster_of(url: str) -> dict:
    import asyncio

    import aiohttp

    from voltana_cli.core.live import get_json

    async def main() -> dict:
        async with aiohttp.ClientSession() as s:
            return dict(await get_json(s, f"{url.rstrip('/')}/cluster"))

    return asyncio.run(main())


def _write_live(console: Console, prepared: object, url: str, done: list, json_path: Path | None,
                csv_path: Path | None, partial: bool) -> None:
    from voltana_cli.core.bench import RunRecord
    from voltana_cli.core.live import live_report

    report = live_report(prepared, url, done, partial)
    if done:
        _render(console, report)
    if json_path is not None:
        write_json(json_path, report)
        say_written(console, json_path)
    if csv_path is not None and done:
        write_csv(csv_path, per_request_frame([RunRecord(r.rate, r.policy, r.log, r.summary) for r in done]))
        say_written(console, csv_path)
