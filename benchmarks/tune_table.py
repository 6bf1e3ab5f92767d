"""The tune must-show table: ``voltana tune`` on a setup, then per rate on held-out seeds whether
``voltana-tuned`` meets the requirement, spends no more than the paper's policy and static-best, and is
within 10 % of the oracle; and where P/D with control wins over the colocated layout (same GPUs, no split).

    python benchmarks/tune_table.py                          # 2P2D A100-80G-SXM4, Llama-3.1-8B, 50..100 req/s
    python benchmarks/tune_table.py --gpu h100-80g-sxm --rates 80:140:10   # the same pair on H100, its rates
    python benchmarks/tune_table.py --model qwen3-32b --rates 15:30:5
    python benchmarks/tune_table.py --prefill-router least-loaded   # every policy's prefill routed by load

Prints the table, the wall time of the tune, and one line per check; exits 1 when a check fails ("<= voltana"
is scored only at rates where the paper's policy meets the requirement: a policy that drops SLOs is no
reference for energy, and the line says n/a there). Then, for
context, static-best as an operator would find it: its pair searched on the training seeds (yesterday's
traffic), run on the held-out seeds. The table's static-best is searched on the held-out seeds themselves,
which is the strongest baseline and picks the pair that the held-out draw happens to favour. The table is
validated on six held-out seeds (``voltana tune`` itself on two, ``--seeds``): on two, that favour decides
comparisons the knobs do not (H100 x Llama-3.1-8B, seed 0, the same knobs: on two seeds voltana-tuned spent
more than static-best at 90, 100, 120 and 130 req/s, by 0.2-0.6 points; on six only at 100, by 0.5).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from voltana_cli.core.bench import BenchConfig, parse_rates, prepare_bench
from voltana_cli.core.tune.run import TuneSpec, run_tune, table_rows
from voltana_cli.core.tune.scenario import Scenario
from voltana_cli.core.tune.static_best import find_static_best, means, requirement_for


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default="a100-80g-sxm4")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--rates", default="50:100:10")
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=6, help="held-out seeds (see the module docstring)")
    ap.add_argument("--train-seeds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--prefill-router", default=None,
                    help="the router that picks prefill instances, for every policy alike (default: bench's, random)")
    a = ap.parse_args()
    rates = parse_rates(a.rates)
    cfg = BenchConfig(request_rates=rates, duration_s=a.duration_s, gpu=a.gpu, model=a.model, policies=["static-max"],
                      seed=a.seed, prefill_router=a.prefill_router)
    scn = prepare_bench(cfg).scenario
    t0 = time.perf_counter()
    out = run_tune(scn, TuneSpec(rates, trials=a.trials, seed=a.seed, train_seeds=a.train_seeds,
                                    heldout_seeds=a.seeds, jobs=a.jobs))
    wall = time.perf_counter() - t0
    rows = table_rows(out)
    by = {(r["request_rate"], r["policy"]): r for r in rows}
    print(f"{a.gpu} x {a.model}, 2P2D, sharegpt, TTFT 800 ms, ITL 50 ms, prefill routed {scn.prefill_router}; "
          f"{out.study.trials} trials "
          f"({out.study.feasible} feasible), tune wall time {wall:.0f} s; held-out seeds, held-out rate "
          f"{out.heldout_rate}")
    if out.study.tuned is not None:
        print(f"tuned knobs: {out.study.params}")
    print(f"{'req/s':>6} {'policy':14} {'energy J':>10} {'saving':>8} {'TTFT':>7} {'ITL':>7} {'both':>7} {'req':>7}")
    for r in sorted(rows, key=lambda r: (r["request_rate"], r["policy"])):
        print(f"{r['request_rate']:6g} {r['policy']:14} {r['energy_j']:10,.0f} {100 * r['saving_vs_static_max']:7.1f}% "
              f"{100 * r['ttft']:6.1f}% {100 * r['itl']:6.1f}% {100 * r['both']:6.1f}% {100 * r['requirement']:6.1f}%"
              + (f"  {r['ran_as']}" if r["ran_as"] else ""))
    ok = True
    for rate in sorted({r["request_rate"] for r in rows}):
        t = by.get((rate, "voltana-tuned"))
        if t is None:
            print(f"{rate:g}: no tuned policy (no feasible trial)")
            ok = False
            continue
        # A baseline that misses the rate's requirement is no reference for energy (dropping SLOs is always
        # cheaper): "<= voltana" is scored only where the paper's policy meets it, and says so where it does not.
        papers_ok = by[(rate, "voltana")]["meets"]
        checks = {
            "meets requirement": t["meets"],
            "<= voltana": t["energy_j"] <= by[(rate, "voltana")]["energy_j"] * 1.0005 if papers_ok else None,
            "<= static-best": t["energy_j"] <= by[(rate, "static-best")]["energy_j"] * 1.0005,
            "within 10 % of oracle": t["energy_j"] <= by[(rate, "oracle")]["energy_j"] * 1.10,
        }
        ok &= all(v is not False for v in checks.values())
        co = by[(rate, "colocated")]
        word = {True: "ok", False: "MISS", None: "n/a (voltana misses the requirement)"}
        print(f"{rate:g} req/s: " + ", ".join(f"{k} {word[v]}" for k, v in checks.items())
              + f" (tuned/oracle {t['energy_j'] / by[(rate, 'oracle')]['energy_j']:.3f}; P/D + control uses "
              f"{100 * (1 - t['energy_j'] / co['energy_j']):.1f} % less energy than colocated ({co['ran_as']}), "
              f"which {'meets' if co['meets'] else 'MISSES'} the requirement)")
    spec = TuneSpec(rates, seed=a.seed, train_seeds=a.train_seeds, heldout_seeds=a.seeds)
    print("static-best searched on the training seeds, run on the held-out seeds (context, not a check):")
    for rate in sorted({r["request_rate"] for r in rows}):
        if out.baselines is not None and rate in out.baselines.static_best:  # the tune's own search, reused
            pick = out.baselines.static_best[rate]
        else:  # the held-out rate, which the tune never searched
            att = means([scn.run("static-max", rate, s) for s in spec.training])[1]
            pick = find_static_best(scn, rate, spec.training, requirement_for(att, spec.target)).best
        if pick is None:
            print(f"{rate:g} req/s: no pair meets the requirement on the training seeds")
            continue
        held = [scn.run(pick.name, rate, s) for s in spec.heldout]
        base = {r["seed"]: r["energy_j"]["total"] for r in out.runs
                if r["request_rate"] == rate and r["policy"] == "static-max"}  # the validation's runs
        saving = sum(1 - r["energy_j"]["total"] / base[s] for r, s in zip(held, spec.heldout, strict=True)) / len(held)
        both = means(held)[1]
        sb, t = by[(rate, "static-best")], by.get((rate, "voltana-tuned"))
        print(f"{rate:g} req/s: {pick.name} saves {100 * saving:.1f} % at {100 * both:.1f} % joint "
              f"attainment ({'meets' if both >= sb['requirement'] - 1e-9 else 'MISSES'} the requirement); the "
              f"table's static-best {sb['ran_as']} saves {100 * sb['saving_vs_static_max']:.1f} %"
              + (f", voltana-tuned {100 * t['saving_vs_static_max']:.1f} %" if t else ""))
    tuned = out.study.tuned
    if tuned is not None and tuned.prefill_router not in (None, scn.prefill_router):
        _same_routing(scn, tuned.prefill_router, spec, rows, out.runs)
    return 0 if ok else 1


def _same_routing(scn: Scenario, router: str, spec: TuneSpec, rows: list[dict], runs: list[dict]) -> None:
    """Context, not a check: the paper's policy and static-best with prefill routed as voltana-tuned routes it
    (the table's references route it as the paper's run did), against the table's requirements, on the
    held-out seeds: how much of voltana-tuned's saving its prefill router makes, and how much its control."""
    alike = replace(scn, prefill_router=router)
    by = {(r["request_rate"], r["policy"]): r for r in rows}
    print(f"the references with prefill routed {router}, like voltana-tuned (context, not a check; held-out seeds):")
    for rate in sorted({r["request_rate"] for r in rows}):
        t = by.get((rate, "voltana-tuned"))
        req = by[(rate, "static-max")]["requirement"]
        base = {r["seed"]: r["energy_j"]["total"] for r in runs
                if r["request_rate"] == rate and r["policy"] == "static-max"}
        sm = sum(base.values()) / len(base)
        pick = find_static_best(alike, rate, spec.heldout, req).best
        v = means([alike.run("voltana", rate, s) for s in spec.heldout])
        parts = [f"voltana {100 * (1 - v[0] / sm):.1f} % ({'meets' if v[1] >= req - 1e-9 else 'MISSES'})"]
        parts.append(f"static-best {pick.name} {100 * (1 - pick.energy_j / sm):.1f} %" if pick is not None
                     else "static-best: no pair meets the requirement")
        if t is not None:
            parts.append(f"voltana-tuned {100 * t['saving_vs_static_max']:.1f} %")
        print(f"{rate:g} req/s (requirement {100 * req:.1f} %): " + ", ".join(parts))


if __name__ == "__main__":
    sys.exit(main())
