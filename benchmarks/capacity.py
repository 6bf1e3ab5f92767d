"""Request-rate capacity per model: the rate where static-max TTFT attainment falls below 90 %.

    python benchmarks/capacity.py [--gpu a100-80g-sxm4] [--models ministral-3b,llama-3.1-8b,qwen3-32b]

For each model (at its spec's default TP) on a simulated 2P2D cluster of the GPU, bisects the ShareGPT
Poisson rate (60 s, seed 0) between 1 and 1000 req/s to 0.5 req/s, under the top static clock, and prints
each capacity and its ratio to the first model's. SLOs: TTFT 800 ms and ITL 50 ms (the paper's Llama-8B
SLOs) unless given.
"""

from __future__ import annotations

import argparse
import sys

from voltana_cli.core.bench import BenchConfig, run_bench


def ttft_attainment(model: str, gpu: str, rate: float, args: argparse.Namespace) -> float:
    cfg = BenchConfig(dataset="sharegpt", request_rates=[rate], duration_s=args.duration_s, seed=args.seed, gpu=gpu,
                      model=model, policies=["static-max"], slo_ttft_ms=args.slo_ttft_ms, slo_itl_ms=args.slo_itl_ms)
    return float(run_bench(cfg)["runs"][0]["attainment"]["ttft"])


def capacity(model: str, gpu: str, args: argparse.Namespace) -> float:
    lo, hi = 1.0, 1000.0
    if ttft_attainment(model, gpu, lo, args) < args.goal:
        return 0.0
    while hi - lo > 0.5:
        mid = (lo + hi) / 2
        if ttft_attainment(model, gpu, mid, args) >= args.goal:
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
    ap.add_argument("--slo-ttft-ms", type=float, default=800.0)
    ap.add_argument("--slo-itl-ms", type=float, default=50.0)
    ap.add_argument("--goal", type=float, default=0.90, help="TTFT attainment that defines capacity")
    args = ap.parse_args(argv)
    caps = {m: capacity(m, args.gpu, args) for m in args.models.split(",")}
    first = next(iter(caps.values()))
    print(f"2P2D {args.gpu}, ShareGPT Poisson {args.duration_s:g} s, static max clock, capacity = highest rate with "
          f"TTFT attainment >= {100 * args.goal:g} % (SLO {args.slo_ttft_ms:g} ms)")
    for m, c in caps.items():
        print(f"{m:>16}: {c:7.1f} req/s  ({c / first:.2f}x the first)" if first else f"{m:>16}: {c:7.1f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
