"""Simulator speed: simulated seconds per wall second for 2P2D A100 Llama-3.1-8B, ShareGPT, 100 req/s, 600 s,
under the voltana policy; then the EcoFreq controller's decision cost (µs). Goal: >= 1000x, <= 20 µs.

Both figures are measured in this one run (best of a few repeats: the machine is shared and noisy). The
simulated-time ratio is printed last.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from voltana_cli.core.bench import BenchConfig, workload_of
from voltana_cli.core.models import ModelPredictor, PerfModel, engine_spec, gpu_spec, model_spec
from voltana_cli.core.policy import REGISTRY, Observation, Policy, PolicyContext
from voltana_cli.core.sim import ClusterConfig, simulate


def _policy(pm: PerfModel, seed: int) -> Policy:
    levels = pm.gpu.ecofreq_levels_mhz
    pred = ModelPredictor(pm, 0.05, np.random.default_rng(seed), list(levels))
    ctx = PolicyContext(tuple(pm.clocks), levels, 0.8, 0.05, pred, pm.engine.gemm_tile)
    return REGISTRY.build("voltana", ctx)


def main() -> int:
    cfg = BenchConfig(request_rates=[100.0], duration_s=600.0, policies=["voltana"])
    pm = PerfModel(gpu_spec(cfg.gpu), model_spec(cfg.model), engine_spec())
    wl = workload_of(cfg, 100.0)
    best = float("inf")
    sim_s = 0.0
    events = 0
    for rep in range(3):
        pol = _policy(pm, rep)
        t0 = time.perf_counter()
        res = simulate(wl, pm, pol, ClusterConfig(), np.random.default_rng(rep))
        dt = time.perf_counter() - t0
        if dt < best:
            best, sim_s, events = dt, res.end_s - res.start_s, res.events
    # Controller decision cost: a decode controller over a stream of varied observations.
    ctl = _policy(pm, 0).make_decode_controller()
    rng = np.random.default_rng(0)
    obs = [Observation(i * 0.02, int(b), int(b) * 500, 0) for i, b in enumerate(rng.integers(1, 400, 20000))]
    best_dec = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for o in obs:
            ctl.decide(o)
        best_dec = min(best_dec, (time.perf_counter() - t0) / len(obs))
    print(f"requests: {len(wl)}, events: {events}, simulated: {sim_s:.1f} s, wall: {best:.3f} s")
    print(f"controller decision cost: {best_dec * 1e6:.2f} us (goal <= 20 us)")
    print(f"simulated seconds per wall second: {sim_s / best:.0f}x (goal >= 1000x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
