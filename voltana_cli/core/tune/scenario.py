"""One simulated world that bench and tune both run policies in: the ground truth, the cluster, the dataset,
the SLOs, and how a (policy, rate, seed) becomes a run.

Every run goes through ``Scenario.run``: a workload drawn from ``(seed, 1)``, a predictor biased from
``(seed, 2)`` (the analytical model with its error, unless a fitted EcoPred is given), the ground truth's
noise from ``(seed, 3)``, the policy built from the registry, ``sim.simulate``, ``metrics.summarize``. The
bench reports these runs; tune scores trials with them and validates on other seeds. One path, so a tuned
result means in bench exactly what it meant in tune.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.metrics import RequestLog, summarize
from voltana_cli.core.models import InstanceModel, ModelPredictor, PerfModel
from voltana_cli.core.models.ecopred import EcoPred
from voltana_cli.core.policy import DEFAULT_PREFILL_ROUTER, REGISTRY, EcoFreqParams, Policy, PolicyContext, Predictor
from voltana_cli.core.policy.feedback import TunedPolicy
from voltana_cli.core.sim import ClusterConfig, simulate
from voltana_cli.core.workloads import LengthTrace, Workload, build_workload


class _NoPredictor:
    """Stands in while the clocks a policy's predictor must cover are worked out (never asked)."""

    def decode_s(self, batch: int, kv_tokens: int, clock_mhz: int) -> float:
        raise AssertionError("not a predictor")

    def prefill_s(self, tokens: int, num_seqs: int, clock_mhz: int) -> float:
        raise AssertionError("not a predictor")


@dataclass
class Scenario:
    """A simulated world and its workload recipe.

    Attributes:
        model: the analytical model (clocks, specs, the predictor's source).
        truth: the ground truth the instances run on (the model, or a profile's interpolant).
        cluster: the cluster's shape and physics.
        lengths: the dataset's token lengths (and timestamps).
        arrival: the arrival process (``auto`` already resolved).
        duration_s: seconds of arrivals (``None`` with ``num_prompts``).
        num_prompts: requests per run instead of a duration.
        burstiness: the gamma process's shape.
        slo_ttft_s: the TTFT SLO.
        slo_itl_s: the ITL SLO.
        prediction_error: the analytical predictor's maximum relative error.
        ecofreq: EcoFreq's knobs.
        tile: the tile-aware router's batch boundary.
        prefill_router: the router that picks prefill instances.
        fitted: a fitted EcoPred the policies predict with (``None``: the analytical model with its error).
        tuned: the knobs ``voltana-tuned`` runs with.
    """

    model: PerfModel
    truth: InstanceModel
    cluster: ClusterConfig
    lengths: LengthTrace
    arrival: str
    duration_s: float | None
    num_prompts: int | None
    burstiness: float
    slo_ttft_s: float
    slo_itl_s: float
    prediction_error: float
    ecofreq: EcoFreqParams
    tile: int
    prefill_router: str = DEFAULT_PREFILL_ROUTER
    fitted: EcoPred | None = None
    tuned: TunedPolicy | None = None

    def workload(self, rate: float, seed: int) -> Workload:
        """The requests of a run at ``rate``: the same for every policy at that rate and seed.

        Raises:
            UserError: no request arrives within the duration at that rate.
        """
        wl = build_workload(self.lengths, self.arrival, rate, np.random.default_rng([seed, 1]),
                            duration_s=None if self.num_prompts else self.duration_s,
                            num_requests=self.num_prompts, burstiness=self.burstiness)
        if len(wl) == 0:
            raise UserError(f"no request arrives within {self.duration_s} s at {rate} req/s: give a longer duration",
                            field="duration_s")
        return wl

    def context(self, seed: int, predictor: Predictor | None = None, tuned: TunedPolicy | None = None) -> PolicyContext:
        """The policy context of a run (``predictor`` left out: a placeholder that must not be asked)."""
        pm = self.model
        return PolicyContext(tuple(pm.clocks), tuple(pm.gpu.ecofreq_levels_mhz), self.slo_ttft_s, self.slo_itl_s,
                             predictor or _NoPredictor(), self.tile, self.ecofreq, self.prefill_router, seed,
                             tuned if tuned is not None else self.tuned)

    def policy(self, name: str, seed: int, tuned: TunedPolicy | None = None) -> Policy:
        """Policy ``name`` with a fresh predictor covering every clock it may ask about."""
        ctx = self.context(seed, tuned=tuned)
        predictor: Predictor
        if self.fitted is not None:
            predictor = self.fitted
        else:
            clocks = REGISTRY.predictor_clocks(name, ctx)
            predictor = ModelPredictor(self.model, self.prediction_error, np.random.default_rng([seed, 2]), clocks)
        return REGISTRY.build(name, replace(ctx, predictor=predictor))

    def simulate(self, name: str, workload: Workload, seed: int, tuned: TunedPolicy | None = None) -> RequestLog:
        """Run policy ``name`` on ``workload`` (on the cluster layout its entry names: P/D, or colocated on the
        same GPUs); the ground truth's noise comes from ``seed``."""
        layout = REGISTRY.entry(name).layout
        cluster = self.cluster if layout == self.cluster.layout else replace(self.cluster, layout=layout)
        return simulate(workload, self.truth, self.policy(name, seed, tuned), cluster,
                        np.random.default_rng([seed, 3]))

    def timeline(self, name: str, rate: float, seed: int, tuned: TunedPolicy | None = None) -> RequestLog:
        """The run ``run`` makes, with every instance's clock changes and iterations recorded (the same seed
        gives the same run: recording changes nothing in it)."""
        recorded = replace(self, cluster=replace(self.cluster, record_timeline=True))
        return recorded.simulate(name, self.workload(rate, seed), seed, tuned)

    def run(self, name: str, rate: float, seed: int, tuned: TunedPolicy | None = None) -> dict:
        """Simulate policy ``name`` at ``rate`` with ``seed``; returns the run's summary (``summarize``)."""
        res = self.simulate(name, self.workload(rate, seed), seed, tuned)
        return summarize(res, self.slo_ttft_s, self.slo_itl_s).as_dict()
