"""Profiling and EcoPred: how long `voltana profile --backend sim` (the default A100 x Llama-3.1-8B plan) takes
end to end, how long the fit takes, held-out accuracy, and what one predictor call costs.
Goals: profile < 20 s; decode MAPE <= 3.5 %, prefill <= 5 % (worst clock, 3 % noise); call <= 5 µs.

Call costs are best-of-5 means over 200,000 calls with varied arguments, measured in this one run next to
the analytical-model predictor and a gradient-boosted-trees model (one-row predict) as yardsticks.
The EcoPred call cost is printed last.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from voltana_cli.core.models.analytical import PerfModel
from voltana_cli.core.models.predictors import ModelPredictor
from voltana_cli.core.models.specs import engine_spec, gpu_spec, model_spec
from voltana_cli.core.profiling import load_profile
from voltana_cli.core.tune import evaluate, gbt_features


def per_call_us(fn, args: list[tuple], reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for a in args:
            fn(*a)
        best = min(best, time.perf_counter() - t0)
    return best / len(args) * 1e6


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "voltana_cli", "profile", "--backend", "sim", "--gpu", "a100-80g-sxm4",
                        "--model", "llama-3.1-8b", "--out", str(out)], check=True, capture_output=True)
        wall = time.perf_counter() - t0
        prof = load_profile(out)
    print(f"voltana profile --backend sim (A100 x Llama-3.1-8B, default plan): {len(prof.data)} rows in {wall:.2f} s "
          "wall, process start included (goal < 20 s)")
    rep = evaluate(prof, holdout=0.2, seed=0, compare_gbt=True)
    for phase, goal in (("decode", 3.5), ("prefill", 5.0)):
        worst = max(rep.accuracy[phase].items(), key=lambda kv: kv[1]["mape_pct"])
        print(f"{phase}: held-out MAPE worst clock {worst[1]['mape_pct']:.2f} % at {worst[0]} MHz (goal <= {goal} %); "
              f"GBT worst {rep.families['gbt'][phase]['worst_mape_pct']:.2f} %")
    print("steps found after batch sizes:", [s.after for s in rep.steps])
    print(f"fit + held-out evaluation + refit: {rep.fit_seconds:.2f} s")

    pred = rep.predictor
    rng = np.random.default_rng(0)
    n = 200_000
    dec_args = [(int(b), int(k), int(c)) for b, k, c in zip(rng.integers(1, 512, n), rng.integers(0, 200_000, n),
                                                             rng.choice([1005, 1410], n), strict=True)]
    pre_args = [(int(t), int(s), int(c)) for t, s, c in zip(rng.integers(1, 8192, n), rng.integers(1, 16, n),
                                                            rng.choice([1005, 1410], n), strict=True)]
    pm = PerfModel(gpu_spec("a100-80g-sxm4"), model_spec("llama-3.1-8b"), engine_spec())
    mp = ModelPredictor(pm, 0.05, np.random.default_rng(0), [1005, 1410])
    pred.prepare([1005, 1410])
    model_us = per_call_us(mp.decode_s, dec_args)

    from sklearn.ensemble import HistGradientBoostingRegressor

    dec = prof.phase("decode")
    gbt = HistGradientBoostingRegressor(max_iter=100, random_state=0).fit(gbt_features("decode", dec), dec["latency_ms"])
    x1 = gbt_features("decode", dec.iloc[:1])
    gbt_us = per_call_us(lambda: gbt.predict(x1), [()] * 2000, reps=3)
    pre_us = per_call_us(pred.prefill_s, pre_args)
    dec_us = per_call_us(pred.decode_s, dec_args)
    print(f"yardsticks: analytical-model predictor {model_us:.2f} µs/call; GBT one-row predict {gbt_us:.0f} µs/call")
    print(f"EcoPred prefill_s: {pre_us:.2f} µs/call")
    print(f"EcoPred decode_s: {dec_us:.2f} µs/call (goal <= 5 µs; {gbt_us / dec_us:.0f}x cheaper than GBT)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
