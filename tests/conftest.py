from __future__ import annotations

import numpy as np
import pytest

from voltana_cli.core.models.analytical import PerfModel
from voltana_cli.core.models.specs import engine_spec, gpu_spec, model_spec
from voltana_cli.core.workloads.workload import Workload


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
