"""Request-rate capacity per model: the rate where static-max TTFT attainment falls below 90 %.

    python benchmarks/capacity.py [--gpu a100-80g-sxm4] [--models ministral-3b,llama-3.1-8b,qwen3-32b]

For each model (at its spec's default TP) on a simulated 2P2D cluster of the GPU, bisects the ShareGPT
Poisson rate (60 s, seed 0) between 1 and 1000 req/s to 0.5 req/s, under the top static clock, and prints
each capacity twice: at one TTFT SLO for every model (800 ms, the paper's Llama-8B SLO: the ratio is then
the models' speed alone, comparable with public throughput ratios) and at each model's own default SLO
(spec data, with its source). Beside the ratios to Llama-3.1-8B it prints the public figures that bracket
them (``docs/notes/model-size-sources.md``); none of those is a TTFT-bound capacity, so they are a range
to land in, not a target. The best public pairs were measured on an H200: ``--gpu h200-141g-sxm`` compares
like with like.
"""

from __future__ import annotations

import argparse
import sys

from voltana_cli.core.bench import BenchConfig, run_bench
from voltana_cli.core.models import model_spec

REFERENCE = "llama-3.1-8b"
#: Public same-GPU, same-engine ratios to an 8B (docs/notes/model-size-sources.md), per model of ours.
PUBLIC = {
    "ministral-3b": "public 3B/8B: 1.61x prefill-bound (SGLang 0.4.4, H200, Llama-3.2-3B vs 3.1-8B FP8, 32k in / 100 out; "
                    "simon-mo/vLLM-Benchmark @ 8eaead1d), 1.32-1.40x decode-heavy; 1.51x A100 batch 1 (Qwen2.5 3B/7B)",
    "qwen3-32b": "public 32B-TP2/8B per instance: 0.56x prefill-bound (SGLang 0.4.4, H200, QwQ-32B TP2 vs R1-Distill-"
                 "Llama-8B, 32k in / 100 out; simon-mo/vLLM-Benchmark @ 50f0e9ee), 0.61-0.74x other mixes; 0.45x A100 "
                 "batch 1 (Qwen2.5 32B TP2 / 7B); 70B-TP2 below it at 0.22-0.28x (TensorRT-LLM perf overview)",
}


def ttft_attainment(model: str, gpu: str, rate: float, args: argparse.Namespace, slo: tuple[float, float]) -> float:
    cfg = BenchConfig(dataset="sharegpt", request_rates=[rate], duration_s=args.duration_s, seed=args.seed, gpu=gpu,
                      model=model, policies=["static-max"], slo_ttft_ms=slo[0], slo_itl_ms=slo[1])
    return float(run_bench(cfg)["runs"][0]["attainment"]["ttft"])


def capacity(model: str, gpu: str, args: argparse.Namespace, slo: tuple[float, float]) -> float:
    lo, hi = 1.0, 1000.0
    if ttft_attainment(model, gpu, lo, args, slo) < args.goal:
        return 0.0
    while hi - lo > 0.5:
        mid = (lo + hi) / 2
        if ttft_attainment(model, gpu, mid, args, slo) >= args.goal:
            lo = mid
        else:
            hi = mid
    return lo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="a100-80g-sxm4")
    ap.add_argument("--models", default="ministral-3b,llama-3.1-8b,qwen3-32b")
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--goal", type=float, default=0.90, help="TTFT attainment that defines capacity")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    if REFERENCE not in models:
        models.append(REFERENCE)
    common = (800.0, 50.0)
    same = {m: capacity(m, args.gpu, args, common) for m in models}
    own = {m: capacity(m, args.gpu, args, (model_spec(m).slo.ttft_ms, model_spec(m).slo.itl_ms)) for m in models}
    print(f"2P2D {args.gpu}, ShareGPT Poisson {args.duration_s:g} s, static max clock; capacity = the highest rate "
          f"with TTFT attainment >= {100 * args.goal:g} %")
    ref_same, ref_own = same[REFERENCE], own[REFERENCE]
    for m in models:
        s = model_spec(m).slo
        r1 = f"{same[m] / ref_same:.2f}x" if ref_same else "n/a"
        r2 = f"{own[m] / ref_own:.2f}x" if ref_own else "n/a"
        print(f"{m:>14}: {same[m]:6.1f} req/s at TTFT 800 ms ({r1} the 8B's); {own[m]:6.1f} req/s at its own "
              f"{s.ttft_ms:g} ms / {s.itl_ms:g} ms ({r2})")
        if m in PUBLIC:
            print(f"{'':>16}{PUBLIC[m]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
