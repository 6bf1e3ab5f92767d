"""The GPU spec's power curve against Perseus' measured A100 SXM clock sweep (how its level and shape compare).

    python benchmarks/power_vs_model.py PATH/gpt3-175b+a100_sxm_bf16.csv [--gpu a100-80g-sxm4]

The file is one of Perseus' stage profiles (github ml-energy/zeus @ 38cb3f9, ``sosp24_data/emulation/
stage_profile/{gpt3-175b,bloom}+a100_sxm_bf16.csv``: time and energy of each pipeline stage's forward and
backward pass on one A100 SXM at every clock from 855 to 1410 MHz). For a few clocks it prints the measured
time over the 1410 MHz time and the measured average power (median over the stages' forward passes) beside
the model's for a compute-bound iteration of the default model (a 16,384-token prefill of 16 sequences), both
at the spec's power limit and with no limit.

What to read from it: the time ratios are the shape the spec's voltage floor and slope were sized to; the
power columns say how the model's absolute level compares with a measured one. Perseus' cards drew more than
400 W at 1410 MHz, so they ran under a higher limit than the VoltanaLLM testbed's 400 W;
``docs/notes/calibration-sensitivity.md`` records what either level does to the paper's panel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from voltana_cli.core.errors import UserError
from voltana_cli.core.models import PerfModel, engine_spec, gpu_spec, model_spec
from voltana_cli.core.models.specs import spec_overrides

CLOCKS = (1410, 1305, 1200, 1095, 1005, 900)
TOKENS, SEQS = 16384, 16
NO_LIMIT_W = 1e5


def model_curve(gpu: str, model: str) -> dict[int, tuple[float, float]]:
    """Per clock: (prefill time in s, average power per GPU in W) at the spec's power limit."""
    pm = PerfModel(gpu_spec(gpu), model_spec(model), engine_spec("sglang"))
    out = {}
    for f in CLOCKS:
        t, e = pm.prefill_cost(TOKENS, f, num_seqs=SEQS)
        out[f] = (t, e / t / pm.tp)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path, help="a Perseus stage profile (see this script's docstring)")
    ap.add_argument("--gpu", default="a100-80g-sxm4", help="the GPU spec to compare (default a100-80g-sxm4)")
    ap.add_argument("--model", default="llama-3.1-8b",
                    help="the model spec whose 16k-token prefill stands for compute-bound work (default llama-3.1-8b)")
    args = ap.parse_args(argv)
    if not args.path.is_file():
        print(f"error: {args.path} does not exist: give the file named in this script's docstring", file=sys.stderr)
        return 2
    try:
        d = pd.read_csv(args.path)
    except (ValueError, UnicodeDecodeError):  # pandas' parser and empty-data errors are ValueErrors
        d = pd.DataFrame()
    if not {"stage", "instruction", "frequency", "time", "energy"} <= set(d.columns):
        print(f"error: {args.path} is not a Perseus stage profile (columns stage,instruction,frequency,time,energy)",
              file=sys.stderr)
        return 2
    fwd = d[d["instruction"] == "forward"].set_index(["stage", "frequency"])
    missing = sorted(set(CLOCKS) - set(fwd.index.get_level_values("frequency")))
    if missing:
        print(f"error: {args.path} has no forward pass at {', '.join(map(str, missing))} MHz: give a Perseus stage "
              "profile of an A100 sweep (855-1410 MHz)", file=sys.stderr)
        return 2
    ratio = (fwd["time"] / fwd["time"].xs(1410, level="frequency").reindex(fwd.index, level="stage")).groupby(
        level="frequency").median()
    power = (fwd["energy"] / fwd["time"]).groupby(level="frequency").median()
    try:
        capped = model_curve(args.gpu, args.model)
        with spec_overrides({"gpu.power_limit_w": NO_LIMIT_W}, {"gpu": args.gpu}):
            free = model_curve(args.gpu, args.model)
    except UserError as exc:  # an unknown spec, or a GPU without these clocks
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limit = gpu_spec(args.gpu).power_limit_w
    print(f"{args.path.name}: forward passes, median over stages; model: {args.gpu} ({limit:.0f} W limit), "
          f"{args.model} prefill of {TOKENS} tokens in {SEQS} sequences")
    print(f"{'MHz':>5} {'measured t/t1410':>17} {'measured W':>11} {'model t/t1410':>14} {'model W':>8} "
          f"{'model W, no limit':>18} {'measured/model W':>17}")
    for f in CLOCKS:
        print(f"{f:>5} {ratio[f]:>17.3f} {power[f]:>11.0f} {capped[f][0] / capped[1410][0]:>14.3f} "
              f"{capped[f][1]:>8.0f} {free[f][1]:>18.0f} {power[f] / free[f][1]:>17.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
