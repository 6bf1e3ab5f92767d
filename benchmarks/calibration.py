"""Calibration of the simulated A100-80G-SXM4 + Llama-3.1-8B 2P2D cluster against VoltanaLLM (PAPER.md §6).

Runs ShareGPT at 50..100 req/s (120 s Poisson, seed 0) under static 1410, static 1005 and the VoltanaLLM
policy (``voltana``) and prints our figures beside the paper's digitised ones, then whether each target
holds: E@1410 within ±15 %, E@1005/E@1410 within ±0.05, saving within ±8 points, static-1410 TTFT and
ITL attainment within ±10 points. Paper cells marked "ovl" (hidden under another marker) are compared
with the neighbour the paper's note names, and flagged with '~'.

Usage: python benchmarks/calibration.py [--seed 0] [--duration-s 120]
"""

from __future__ import annotations

import argparse
import math
import sys

from voltana_cli.core.bench import BenchConfig, run_bench

N = math.nan
# rate: (E1410, E1005, EV, saving %, TTFT V/1410/1005, ITL V/1410/1005); None = "ovl" (hidden under V's marker)
PAPER = {
    50: (1.78, None, 1.14, 36.0, (98, None, None), (100, None, None)),
    55: (1.81, None, 1.17, 35.4, (96, None, None), (100, None, None)),
    60: (1.91, None, 1.22, 36.1, (94, 99, 92), (99, None, None)),
    65: (1.96, 1.26, 1.28, 34.7, (92, 96, 83), (99, None, 93)),
    70: (2.00, 1.31, 1.43, 28.5, (87, 95, 81), (99, None, 83)),
    75: (2.01, 1.34, 1.52, 24.4, (85, 94, 64), (99, None, 50)),
    80: (2.06, 1.40, 1.66, 19.4, (82, 87, 56), (96, 100, 41)),
    85: (2.11, 1.46, 1.77, 16.1, (75, 78, 40), (98, None, 30)),
    90: (2.15, 1.51, 1.86, 13.5, (70, 66, 29), (94, 90, 23)),
    95: (2.23, 1.56, 1.97, 11.7, (52, 61, 7), (81, 75, 20)),
    100: (2.29, 1.64, 2.07, 9.6, (41, 44, 6), (59, 51, 18)),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duration-s", type=float, default=120.0)
    args = ap.parse_args(argv)
    cfg = BenchConfig(
        dataset="sharegpt", request_rates=[float(r) for r in PAPER], duration_s=args.duration_s,
        seed=args.seed, gpu="a100-80g-sxm4", model="llama-3.1-8b", policies=["static:1410", "static:1005", "voltana"],
        slo_ttft_ms=800, slo_itl_ms=50,
    )
    report = run_bench(cfg)
    by = {(r["request_rate"], r["policy"]): r for r in report["runs"]}
    fails: list[str] = []
    hdr = (f"{'rps':>4} | {'E1410 ours/paper':>17} | {'E1005/E1410 o/p':>16} | {'E_V ours/paper':>15} | "
           f"{'saving % o/p':>13} | {'TTFT% 1410 o/p':>14} | {'ITL% 1410 o/p':>13} | {'TTFT% V o/p':>11} | "
           f"{'ITL% V o/p':>10} | {'TTFT%/ITL% 1005 o/p':>19}")
    print("energy in 1e5 J; attainment in %; o/p = ours/paper; ~ = paper cell 'ovl', compared with V's marker")
    print(hdr)
    print("-" * len(hdr))
    for rate, (e14, e10, ev, sav, ttft_p, itl_p) in PAPER.items():
        r14, r10, rv = (by[(float(rate), p)] for p in ("static:1410", "static:1005", "voltana"))
        o14 = r14["energy_j"]["total"] / 1e5
        o10 = r10["energy_j"]["total"] / 1e5
        ov = rv["energy_j"]["total"] / 1e5
        osav = 100 * (1 - ov / o14)
        ratio_o = o10 / o14
        p10 = e10 if e10 is not None else ev
        ratio_p = p10 / e14
        ot14, oi14 = 100 * r14["attainment"]["ttft"], 100 * r14["attainment"]["itl"]
        otv, oiv = 100 * rv["attainment"]["ttft"], 100 * rv["attainment"]["itl"]
        ot10, oi10 = 100 * r10["attainment"]["ttft"], 100 * r10["attainment"]["itl"]
        pt14 = ttft_p[1] if ttft_p[1] is not None else ttft_p[0]
        pi14 = itl_p[1] if itl_p[1] is not None else itl_p[0]
        pt10 = ttft_p[2] if ttft_p[2] is not None else ttft_p[0]
        pi10 = itl_p[2] if itl_p[2] is not None else itl_p[0]
        t = lambda v: "~" if v is None else " "  # noqa: E731
        print(
            f"{rate:>4} | {o14:7.2f} / {e14:5.2f}   | {ratio_o:6.3f} / {ratio_p:5.3f}{t(e10)} | {ov:6.2f} / {ev:5.2f} | "
            f"{osav:5.1f} / {sav:4.1f} | {ot14:5.0f} / {pt14:3d}{t(ttft_p[1])} | {oi14:5.0f} / {pi14:3d}{t(itl_p[1])}| "
            f"{otv:4.0f} / {ttft_p[0]:3d} | {oiv:4.0f} / {itl_p[0]:3d} | "
            f"{ot10:3.0f}/{oi10:3.0f} / {pt10:3d}/{pi10:3d}"
        )
        if abs(o14 / e14 - 1) > 0.15:
            fails.append(f"{rate}: E@1410 off by {100 * (o14 / e14 - 1):+.1f} %")
        if abs(ratio_o - ratio_p) > 0.05:
            fails.append(f"{rate}: E1005/E1410 off by {ratio_o - ratio_p:+.3f}")
        if abs(osav - sav) > 8:
            fails.append(f"{rate}: saving off by {osav - sav:+.1f} points")
        if abs(ot14 - pt14) > 10:
            fails.append(f"{rate}: static-1410 TTFT attainment off by {ot14 - pt14:+.0f} points")
        if abs(oi14 - pi14) > 10:
            fails.append(f"{rate}: static-1410 ITL attainment off by {oi14 - pi14:+.0f} points")
    print()
    if fails:
        print(f"targets missed ({len(fails)}):")
        for f in fails:
            print("  " + f)
    else:
        print("all calibration targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
