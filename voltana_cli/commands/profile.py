"""``voltana profile``: measure (torch, sglang) or model (sim) prefill/decode latency and energy across clocks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from voltana_cli.commands import progress_bar, user_errors
from voltana_cli.core.errors import UserError
from voltana_cli.core.profiling import (
    BACKENDS,
    PROFILES_ROOT,
    Profile,
    ProfileRequest,
    check_profile_out,
    default_profile_dir,
    run_profile,
    summary_frame,
    write_profile,
)

#: This command's flags for the core fields whose flag is not ``--field-name``.
FLAGS = {"clocks_mhz": "--clocks", "gpu_indices": "--gpu-index", "out_dir": "--out"}


def parse_int_list(flag: str, text: str | None) -> list[int] | None:
    """``"1005,1410"`` -> ``[1005, 1410]``; a bad item is a one-line error naming the flag.

    Args:
        flag: the option the text came from, for the error.
        text: comma-separated whole numbers, or ``None`` (not given).

    Raises:
        UserError: an item is not a whole number, or there is none.
    """
    if text is None:
        return None
    try:
        vals = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} {text!r}: give whole numbers separated by commas, e.g. 1,8,9,16") from None
    if not vals:
        raise UserError(f"{flag} is empty: give whole numbers separated by commas")
    return vals


def profile(
    backend: str = typer.Option("sim", help=f"Where the numbers come from: {', '.join(BACKENDS)} "
                                "(sim: the analytical model with noise; torch: real forward passes, random weights; "
                                "sglang: controlled batches against a running SGLang server)."),
    gpu: str | None = typer.Option(None, help="sim: GPU spec (default: the one in voltana_cli/data/defaults.yaml). "
                                   "torch, sglang: read from the device."),
    model: str | None = typer.Option(None, help="Model spec (default: the one in voltana_cli/data/defaults.yaml); for "
                                     "torch its architecture: no weights are downloaded."),
    hf_config: Path | None = typer.Option(None, help="torch: build the architecture from this Hugging Face config.json "
                                          "instead of --model."),
    tp: int | None = typer.Option(None, help="sim: tensor parallelism (default: the model's)."),
    clocks: str | None = typer.Option(None, help="SM clocks in MHz, comma-separated. sim default: from half the maximum "
                                      "up in the GPU spec's profile clock steps, plus its EcoFreq levels; torch: the "
                                      "card's current clock."),
    batch_sizes: str | None = typer.Option(None, help="Decode batch sizes (default: 1,2,4, both sides of every multiple "
                                           "of 8 to 256 and of 128 above, to 1024)."),
    kv_per_request: str | None = typer.Option(None, help="Decode context tokens per request (default 64,256,1024; "
                                              "capped by the KV cache)."),
    prefill_tokens: str | None = typer.Option(None, help="Prefill batch tokens (default 32 ... 8192, powers of 2)."),
    prefill_seqs: str | None = typer.Option(None, help="Sequences per prefill batch (default 1,2,3,4,6,8,12,16)."),
    phases: str = typer.Option("prefill,decode", help="Which phases to profile."),
    repeats: int = typer.Option(3, help="Timed windows per configuration."),
    warmup: int | None = typer.Option(None, help="Untimed calls before each window (torch default 2 on GPU)."),
    cooldown_s: float | None = typer.Option(None, help="Pause after each clock change (torch default 2 s on GPU)."),
    min_window_s: float | None = typer.Option(None, help="Repeat calls until a window lasts this long, so the energy "
                                              "counter (updated every 20-100 ms) covers it (torch default 0.5 s on GPU)."),
    noise: float = typer.Option(0.03, help="sim: lognormal latency noise (0.03 = 3 %)."),
    seed: int = typer.Option(0, help="Seed of the noise (sim) and the random weights (torch)."),
    lock_clocks: bool = typer.Option(False, "--lock-clocks/--no-lock-clocks",
                                     help="torch: lock the SM clock to each --clocks value (needs root or CAP_SYS_ADMIN; "
                                     "restored on exit). Without it: measure at the card's own clock."),
    device: str = typer.Option("cuda", help="torch: cuda, cuda:N or cpu."),
    dtype: str | None = typer.Option(None, help="torch: bfloat16 (GPU default), float16 or float32 (CPU default)."),
    sglang_url: str = typer.Option("http://127.0.0.1:30000", help="sglang: the running server's URL."),
    gpu_index: str | None = typer.Option(None, help="sglang: the server's GPUs on this machine (comma-separated CUDA "
                                         "indices), for NVML energy and clocks."),
    window_tokens: int = typer.Option(32, help="sglang: decode tokens per request in each timed window."),
    out_text: str | None = typer.Option(None, "--out", help="Directory for profile.csv + metadata.yaml "
                                        "(default profiles/<gpu>/<model>)."),
    force: bool = typer.Option(False, help="Replace a profile already in --out."),
) -> None:
    """Measure or model prefill and decode iterations across GPU clocks; write a profile."""
    console = Console(width=None if sys.stdout.isatty() else 140)
    err = Console(stderr=True)
    with user_errors(FLAGS):
        req = ProfileRequest(
            backend=backend, gpu=gpu, model=model, tp=tp, clocks_mhz=parse_int_list("--clocks", clocks),
            batch_sizes=parse_int_list("--batch-sizes", batch_sizes),
            kv_per_request=parse_int_list("--kv-per-request", kv_per_request),
            prefill_tokens=parse_int_list("--prefill-tokens", prefill_tokens),
            prefill_seqs=parse_int_list("--prefill-seqs", prefill_seqs),
            phases=tuple(p.strip() for p in phases.split(",") if p.strip()), repeats=repeats,
            warmup=warmup, cooldown_s=cooldown_s, min_window_s=min_window_s, noise=noise, seed=seed,
            lock_clocks=lock_clocks, device=device, dtype=dtype, hf_config=hf_config, sglang_url=sglang_url,
            gpu_indices=parse_int_list("--gpu-index", gpu_index), window_tokens=window_tokens,
        )
        if out_text == "":  # an unset shell variable, most likely; not "the current folder"
            raise UserError("is empty: give the profile's directory, or leave it out for profiles/<gpu>/<model>",
                            field="out_dir")
        out = Path(out_text) if out_text is not None else req.planned_out_dir()
        # Fail on an unusable output directory before measuring, which can take hours; a measuring backend's
        # default directory is known only after the run, so until then only the profiles root is checked.
        if out is not None:
            check_profile_out(out, force)
        else:
            check_profile_out(PROFILES_ROOT, True)
        prof = run_with_progress(req, err)
        if out is None:
            out = default_profile_dir(prof.meta.gpu, prof.meta.model)
            check_profile_out(out, force)
        write_profile(prof, out)
        render_summary(console, prof)
        console.print(f"wrote {out}/profile.csv and metadata.yaml ({len(prof.data)} rows)")


def run_with_progress(req: ProfileRequest, err: Console) -> Profile:
    """``run_profile`` with a progress bar (windows done of the plan's total) and warnings on ``err``."""
    with progress_bar(err) as prog:
        task = prog.add_task(f"profiling ({req.backend})", total=None)

        def start(total: int) -> None:
            prog.update(task, total=total)

        def window(phase: str) -> None:
            prog.update(task, description=f"profiling ({req.backend}) {phase}")
            prog.advance(task)

        return run_profile(req, start, window, warn=lambda m: err.print(f"warning: {m}"))


def render_summary(console: Console, prof: Profile) -> None:
    """Print how the profile was taken and a table per (phase, clock)."""
    m = prof.meta
    locked = "locked" if m.clocks_locked else "NOT locked"
    console.print(f"[bold]voltana profile[/] ({m.backend}) {m.gpu_name} x TP{m.tp}, {m.model}, {m.engine}; "
                  f"clocks {locked}. {m.clock_note}")
    table = Table()
    for col in ("phase", "clock MHz", "rows", "latency ms (min-max)", "power W", "energy/token mJ"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for r in summary_frame(prof).to_dict("records"):
        table.add_row(
            r["phase"], str(r["clock_mhz"]), str(r["rows"]), f"{r['latency_min_ms']:.2f} - {r['latency_max_ms']:.2f}",
            "unavailable" if math.isnan(r["power_w"]) else f"{r['power_w']:.0f}",
            "unavailable" if math.isnan(r["energy_per_token_mj"]) else f"{r['energy_per_token_mj']:.2f}",
        )
    console.print(table)
