"""Decode KV pressure: what SGLang's retraction does to an overloaded decode, by reserved-token margin.

    python benchmarks/kv_pressure.py [--rates 8,12,16] [--margins 8,512] [--engine sglang-voltanallm-testbed]

Simulates a 2P2D A100-80G Llama-3.1-8B cluster at the top clock under long outputs (random lengths like
SGLang's random dataset: 256-512 input, 1000-2000 output tokens; 120 s of Poisson arrivals, seed 0), with
the engine spec's ``decode_reserved_tokens`` (the KV margin a decode keeps per active request when it
pre-allocates a new one) set to each margin in turn: 8 is the VoltanaLLM run scripts' flag, 512 stock
SGLang's default. A thin margin admits more requests and then retracts running ones as their outputs grow
(they stall: one long ITL each); a wide one holds new requests back in pre-allocation instead. Prints, per
margin and rate, the retractions, the requests they hit, the longest pause, TTFT and ITL attainment (SLOs
800 ms / 50 ms) and TTFT p50 / token-weighted ITL p99.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from voltana_cli.core.bench import BenchConfig, prepare_bench
from voltana_cli.core.metrics import summarize
from voltana_cli.core.models.specs import spec_overrides


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="8,12,16")
    ap.add_argument("--margins", default="8,512")
    ap.add_argument("--engine", default="sglang-voltanallm-testbed")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(f"2P2D a100-80g-sxm4 llama-3.1-8b, engine {args.engine}, static-max, random 256-512 in / 1000-2000 out")
    print(f"{'margin':>6} {'req/s':>5} {'retracted':>9} {'requests':>8} {'max pause s':>11} {'TTFT ok':>7} "
          f"{'ITL ok':>6} {'TTFT p50 ms':>11} {'ITL p99 ms':>10}")
    for margin in (int(m) for m in args.margins.split(",")):
        for rate in (float(r) for r in args.rates.split(",")):
            cfg = BenchConfig(dataset="random", random_input_len=512, random_output_len=2000, request_rates=[rate],
                              duration_s=120.0, seed=args.seed, gpu="a100-80g-sxm4", model="llama-3.1-8b",
                              engine=args.engine, policies=["static-max"], slo_ttft_ms=800, slo_itl_ms=50)
            with spec_overrides({"engine.decode_reserved_tokens": margin}, {"engine": args.engine}):
                prep = prepare_bench(cfg)
                res = prep.scenario.simulate("static-max", prep.scenario.workload(rate, args.seed), args.seed)
            s = summarize(res, 0.8, 0.05)
            pauses = res.pauses
            longest = float(np.max(res.itl_max_s[pauses[:, 0]])) if len(pauses) else 0.0
            print(f"{margin:>6} {rate:>5g} {len(pauses):>9} {len(np.unique(pauses[:, 0])):>8} {longest:>11.2f} "
                  f"{100 * s.attainment['ttft']:>6.1f}% {100 * s.attainment['itl']:>5.1f}% "
                  f"{s.ttft_ms['p50']:>11.0f} {s.itl_ms['p99']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
