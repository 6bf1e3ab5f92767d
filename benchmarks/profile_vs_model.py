"""A measured profile against the analytical model of the same GPU and model, per batch shape.

    python benchmarks/profile_vs_model.py h200-141g-sxm/llama-3.1-8b

For every configuration of the profile (phase, clock, batch size, tokens; repeats averaged) it prints the
measured latency and power beside the analytical model's at the same clock, and the ratio. The model is
built from the profile's own metadata (GPU key, model, TP); the profile's clock label is used as is (a
profile taken with clocks not locked says so in its metadata, and its label is the median observed clock).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from voltana_cli.core.models import PerfModel, engine_spec, gpu_spec, model_spec, prefill_pairs
from voltana_cli.core.profiling import load_profile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="profile directory or shipped <gpu>/<model>")
    args = ap.parse_args()
    prof = load_profile(args.profile)
    m = prof.meta
    pm = PerfModel(gpu_spec(m.gpu), model_spec(m.model), engine_spec(), tp=m.tp)
    print(f"{args.profile}: {m.gpu_name}, {m.engine} ({m.engine_version}), backend {m.backend}, "
          f"clocks locked: {m.clocks_locked}. {m.clock_note}")
    print(f"model: analytical {pm.gpu.name} x {pm.model.name}, TP {pm.tp}, engine spec '{pm.engine.name}'")
    df = prof.data.groupby(["phase", "clock_mhz", "batch_size", "num_tokens"], as_index=False)[
        ["latency_ms", "power_w"]].mean()
    print(f"{'phase':8}{'clock':>6}{'batch':>6}{'tokens':>8}{'meas ms':>10}{'model ms':>10}{'ratio':>7}"
          f"{'meas W':>8}{'model W':>9}{'ratio':>7}")
    lat_ratios: dict[str, list[float]] = {"prefill": [], "decode": []}
    for r in df.itertuples():
        clock = min(pm.clocks, key=lambda c: abs(c - int(r.clock_mhz)))
        if r.phase == "decode":
            t, e = pm.decode_cost(int(r.batch_size), int(r.num_tokens), clock)
        else:
            pairs = float(prefill_pairs(int(r.num_tokens), int(r.batch_size)))
            t, e = pm.prefill_cost(int(r.num_tokens), clock, int(r.batch_size), pairs)
        t_ms, p_w = t * 1e3, e / t
        lat_ratios[str(r.phase)].append(float(r.latency_ms) / t_ms)
        pw = float(r.power_w)
        print(f"{r.phase:8}{clock:>6}{int(r.batch_size):>6}{int(r.num_tokens):>8}{r.latency_ms:>10.2f}{t_ms:>10.2f}"
              f"{r.latency_ms / t_ms:>7.2f}{pw:>8.0f}{p_w:>9.0f}{pw / p_w if np.isfinite(pw) else float('nan'):>7.2f}")
    for phase, rs in lat_ratios.items():
        if rs:
            print(f"{phase}: measured/model latency median {np.median(rs):.2f} (range {min(rs):.2f}-{max(rs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
