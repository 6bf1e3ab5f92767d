"""The colocated layout: the same GPUs without the P/D split, chunked prefill mixed into decode batches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import make_policy, make_workload
from tests.test_instance import SmallKv, drive
from voltana_cli.core.bench import BenchConfig, prepare_bench, run_bench
from voltana_cli.core.errors import UserError
from voltana_cli.core.metrics import summarize
from voltana_cli.core.policy import REGISTRY, StaticController
from voltana_cli.core.sim import ClusterConfig, ColocatedInstance, CostCache, Outcomes, Requests, simulate
from voltana_cli.core.tune.static_best import find_colocated_best, requirement_for


def _instance(model, inputs: list[int], outputs: list[int], budget: int = 4096) -> tuple[ColocatedInstance, Outcomes]:
    reqs = Requests([0.0] * len(inputs), inputs, outputs)
    outs = Outcomes.empty(len(inputs))
    inst = ColocatedInstance(0, StaticController(1410), CostCache(model, budget), reqs, outs, lambda: 1.0, 0.003, 0.0)
    for rid in range(len(inputs)):
        inst.submit(rid, 0.0)
    return inst, outs


def test_a_mixed_iteration_costs_what_the_ground_truth_says(a100_8b):
    """Decode batch and prefill chunks in one pass: the instance's cost is the model's ``mixed_cost``."""
    inst, _ = _instance(a100_8b, [300, 200, 5000], [20, 20, 20])
    t = inst.start(0.0)  # all three prefill, the third chunked: 4096 - 500 = 3596 of its 5000 tokens
    assert inst._chunks == [300, 200, 3596] and inst.batch == 0
    inst.finish(t)
    assert inst.batch == 2  # the two whole prompts got their first token and joined the batch
    inst.start(t)
    assert inst.batch == 2 and inst._chunks == [5000 - 3596]
    want = a100_8b.mixed_cost(2, inst.kv_tokens, 1404, 1, inst._pairs, 1410)
    assert inst.cost(1410) == pytest.approx(want, rel=1e-12)
    # The chunk budget counts the decode tokens riding in the pass.
    assert sum(inst._chunks) + inst.batch <= 4096


def test_first_token_ends_the_last_chunk_and_every_later_token_ends_an_iteration(a100_8b):
    inst, outs = _instance(a100_8b, [100, 6000], [3, 1])
    end = drive(inst)
    assert all(math.isfinite(x) for x in outs.finish_s) and end == max(outs.finish_s)
    # Request 0 (3 tokens): first token after iteration 0, then iterations 1 and 2.
    assert outs.first_iter[0] == 1 and outs.finish_s[0] == pytest.approx(sum(inst.durations[:3]))
    # Request 1 (one token) needs two chunks (4096 - 100, then the rest) and leaves with its first token.
    assert outs.first_token_s[1] == outs.finish_s[1] == pytest.approx(sum(inst.durations[:2]))
    assert sum(inst.batches) == 2  # the decode tokens: request 0's two later tokens


def test_admission_keeps_the_kv_reservation_within_capacity(a100_8b):
    model = SmallKv(a100_8b, kv_capacity_tokens=1000)
    inst, outs = _instance(model, [300] * 5, [10] * 5)
    inst.start(0.0)
    assert len(inst.prefilling) == 3 and len(inst.waiting) == 2  # 3 x 310 fit 1000; the 4th waits
    now = 0.0
    while inst.has_work():
        assert inst.reserved <= model.kv_capacity_tokens
        dt = inst.start(now)
        if dt is None:
            break
        now += dt
        inst.finish(now)
    assert all(math.isfinite(x) for x in outs.finish_s)
    assert outs.first_token_s[3] > outs.first_token_s[2]


def test_a_colocated_cluster_serves_every_request_on_the_same_gpus(a100_8b):
    wl = make_workload(n=400, rate=30.0)
    pol = make_policy(a100_8b, "colocated:1410")
    res = simulate(wl, a100_8b, pol, ClusterConfig(n_prefill=2, n_decode=2, layout="colocated"),
                   np.random.default_rng(0))
    assert [i.role for i in res.instances] == ["colocated"] * 4  # 2P2D's four GPUs, each serving both phases
    assert np.array_equal(res.prefill_instance, res.decode_instance)  # no KV transfer: one instance per request
    assert np.all(np.isfinite(res.finish_s)) and np.all(res.ttft_s > 0)
    assert np.array_equal(res.gap_count, res.output_tokens - 1)
    assert res.token_gaps[1].sum() == (res.output_tokens - 1).sum()
    # A request's ITLs are the iterations between its first and its last token.
    itl_total = np.nansum(res.itl_mean_s * res.gap_count)
    assert itl_total == pytest.approx(float(np.sum((res.finish_s - res.arrival_s - res.ttft_s)[res.gap_count > 0])))
    s = summarize(res, 0.8, 0.05).energy_j
    assert s["total"] == pytest.approx(s["colocated"] + s["idle"]) and s["prefill"] == s["decode"] == 0
    for st in res.instances:
        assert st.busy_s + st.idle_s == pytest.approx(res.end_s - res.start_s, rel=1e-6)


def test_an_unknown_layout_is_one_error():
    with pytest.raises(UserError, match="unknown layout 'ring'"):
        ClusterConfig(layout="ring").validate()


def test_colocated_names_a_clock_or_is_searched(a100_8b):
    assert REGISTRY.searched("colocated") and not REGISTRY.searched("colocated:1200")
    assert REGISTRY.entry("colocated").layout == "colocated"
    with pytest.raises(UserError, match="colocated:<MHz>"):
        make_policy(a100_8b, "colocated:fast")
    with pytest.raises(UserError, match="not a supported clock"):
        make_policy(a100_8b, "colocated:99999")


def test_colocated_best_is_the_cheapest_clock_that_meets_the_requirement():
    scn = prepare_bench(BenchConfig(request_rates=[30.0], duration_s=20, policies=["static-max"])).scenario
    base = scn.run("static-max", 30.0, 0)
    req = requirement_for(base["attainment"]["both"], 0.99)
    found = find_colocated_best(scn, 30.0, [0], req)
    assert found.best is not None and found.best.name.startswith("colocated:")
    feasible = [r for r in found.tried if r.attainment >= req]
    assert found.best.energy_j == min(r.energy_j for r in feasible)
    assert found.best.energy_j <= found.tried[0].energy_j  # never dearer than its top clock
    assert found.tried[0].prefill_mhz == scn.model.clocks[-1]


def test_bench_runs_colocated_at_the_clock_its_search_found():
    rep = run_bench(BenchConfig(request_rates=[30.0], duration_s=20, policies=["static-max", "colocated"]))
    co = next(r for r in rep["runs"] if r["policy"] == "colocated")
    assert co["ran_as"].startswith("colocated:") and "colocated" in co["energy_j"]
    assert [i["role"] for i in co["instances"]] == ["colocated"] * 4
