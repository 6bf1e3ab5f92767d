from __future__ import annotations

import numpy as np
import pytest

from voltana_cli.core.models import ModelPredictor, PerfModel, engine_spec, gpu_spec, model_spec
from voltana_cli.core.policy import EcoFreqParams, Policy, PolicyContext, build_policy
from voltana_cli.core.workloads import Workload


@pytest.fixture(scope="session")
def a100_8b() -> PerfModel:
    return PerfModel(gpu_spec("a100-80g-sxm4"), model_spec("llama-3.1-8b"), engine_spec())


def make_workload(n: int = 200, rate: float = 5.0, seed: int = 0, out_max: int = 64) -> Workload:
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / rate, n)
    return Workload(
        arrival_s=np.cumsum(gaps) - gaps[0],
        input_tokens=rng.integers(2, 600, n),
        output_tokens=rng.integers(1, out_max, n),
        name="test",
    )


def policy_context(pm: PerfModel, seed: int = 0, error: float = 0.05, slo_ttft_s: float = 0.8,
                   slo_itl_s: float = 0.05, ecofreq: EcoFreqParams | None = None) -> PolicyContext:
    """A bench-like policy context: the model as predictor with a seeded error on the GPU's EcoFreq levels."""
    ecofreq = ecofreq or EcoFreqParams()
    levels = ecofreq.clocks_mhz or pm.gpu.ecofreq_levels_mhz
    pred = ModelPredictor(pm, error, np.random.default_rng(seed), list(levels))
    return PolicyContext(tuple(pm.clocks), pm.gpu.ecofreq_levels_mhz, slo_ttft_s, slo_itl_s, pred,
                         pm.engine.gemm_tile, ecofreq)


def make_policy(pm: PerfModel, name: str, seed: int = 0) -> Policy:
    return build_policy(name, policy_context(pm, seed))
