"""The instance scheduler on its own, driven without the event heap (as the emulated engine drives it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voltana_cli.core.policy import Observation, StaticController
from voltana_cli.core.sim import CostCache, DecodeInstance, Outcomes, PrefillInstance, Requests


@dataclass
class SmallKv:
    """A ground truth with a tiny KV cache, so the capacity bound is reached with small requests; ``margin``
    sets the engine's ``decode_reserved_tokens`` (None: the spec's)."""

    base: object
    kv_capacity_tokens: int = 3000
    max_batch: int = 8
    margin: int | None = None

    def __getattr__(self, name: str):
        if name == "engine" and self.margin is not None:
            return self.base.engine.model_copy(update={"decode_reserved_tokens": self.margin})
        return getattr(self.base, name)


def drive(inst, now: float = 0.0, until: float = math.inf, step: float = 0.0) -> float:
    """Run iterations back to back from ``now`` as a wall-clock loop would; returns the end time."""
    while inst.has_work() and now < until:
        dt = inst.start(now)
        if dt is None:
            break
        now += dt + step
        inst.finish(now)
    return now


def landing(inst: DecodeInstance) -> DecodeInstance:
    """Land each request's KV cache as soon as it is pre-allocated (prefill and transfer take no time)."""
    inst.on_preallocated = lambda rids, now: [inst.submit(rid, now) for rid in rids]
    return inst


def _decode(model, n_req: int, inp: int, out: int, controller=None) -> tuple[DecodeInstance, Requests, Outcomes]:
    reqs = Requests([0.0] * n_req, [inp] * n_req, [out] * n_req)
    outs = Outcomes.empty(n_req)
    inst = landing(DecodeInstance(0, controller or StaticController(1410), CostCache(model, 8192), reqs, outs,
                                  lambda: 1.0, 0.003, 0.0))
    for rid in range(n_req):
        deliver(inst, rid, 0.0)
    return inst, reqs, outs


def deliver(inst: DecodeInstance, rid: int, now: float) -> None:
    """Route a request to a ``landing`` instance; its KV lands when the instance pre-allocates it."""
    inst.route(rid)
    inst.preallocate(now)


@settings(max_examples=40, deadline=None)
@given(n_req=st.integers(1, 30), inp=st.integers(1, 900), out=st.integers(1, 40), margin=st.sampled_from([8, 512]))
def test_decode_keeps_kv_and_batch_within_capacity(a100_8b, n_req, inp, out, margin):
    """Whatever the pool's pressure, each iteration's tokens fit the KV cache (retracting when they would
    not), and every request gets every token exactly once."""
    model = SmallKv(a100_8b, margin=margin)
    inst, reqs, outs = _decode(model, n_req, inp, out)
    now = 0.0
    while inst.has_work():
        dt = inst.start(now)
        assert inst.batch <= model.max_batch
        # The next tokens fit beside what is held (one request always runs: SGLang keeps the last one).
        assert inst.kv_tokens + inst.allocated_tokens + inst.batch <= max(model.kv_capacity_tokens, inp + out)
        if dt is None:
            break
        now += dt
        inst.finish(now)
    assert all(math.isfinite(t) for t in outs.finish_s)
    assert all(f >= t for f, t in zip(outs.finish_s, outs.first_token_s, strict=True))
    # Every request got output_tokens - 1 decode iterations: the batch sizes add up to the ITL count.
    assert sum(inst.batches) == n_req * max(out - 1, 0)
    assert inst.kv_tokens == 0 and not inst.retracted


def test_decode_preallocates_in_order_and_gates_the_rest(a100_8b):
    """SGLang's pre-allocation: a request's input KV, while the free KV less the margin per active request
    holds it plus a margin; the head of the queue blocks the rest."""
    inst, _, outs = _decode(SmallKv(a100_8b, kv_capacity_tokens=2000, margin=512), 5, 300, 10)
    inst.start(0.0)
    # 300 fits an empty pool; 2000 - 300 - 512 = 1188 >= 300 + 512; 2000 - 600 - 1024 = 376 < 812: the 3rd waits.
    assert inst.batch == 2 and len(inst.prealloc) == 3
    assert [math.isfinite(t) for t in outs.first_token_s] == [True, True, False, False, False]
    drive(inst)
    assert outs.first_token_s == sorted(outs.first_token_s)


def test_decode_retracts_the_newest_when_the_pool_fills_and_resumes_it_first(a100_8b):
    """Three equal requests outgrow a 1200-token pool: the newest is retracted first (fewest tokens, then the
    longest prompt, then the newest), the next newest later; they resume oldest first once KV frees, each
    getting its next token from the iteration it resumes in, and no token is lost or given twice."""
    inst, _, outs = _decode(SmallKv(a100_8b, kv_capacity_tokens=1200, margin=8), 3, 300, 500)
    retracted: list[tuple[int, int]] = []
    now = 0.0
    while inst.has_work():
        before = {rid for rid, _, _ in inst.retracted}
        dt = inst.start(now)
        retracted += [(rid, it) for rid, _, it in inst.retracted if rid not in before]
        now += dt
        inst.finish(now)
    # At iteration 100 the three hold 3 x 400 tokens: no room for a step of 3; request 2 leaves, and leaves
    # room for 20 steps of 2. The two fill the pool again after 200 more steps (800 + 2 x 200 tokens): request 1
    # leaves, and 0 runs alone to its end.
    assert retracted[:2] == [(2, 100), (1, 300)]
    assert outs.finish_s[0] < outs.finish_s[1] < outs.finish_s[2]
    assert [p[:2] for p in outs.pauses[:2]] == [(2, 100), (1, 300)]  # resumed in the order they left
    assert all(a < b for _, a, b in outs.pauses)
    assert sum(inst.batches) == 3 * 499  # no token lost, none given twice
    assert inst.kv_tokens == 0 and not inst.retracted


def test_retraction_and_resumption_wait_for_the_kv_copies_to_host_and_back(a100_8b):
    """SGLang's decode copies a retracted request's KV to host memory before the step and back when it resumes,
    synchronously: those iterations last longer by the copied bytes over the host link, at idle power, and
    no other iteration changes."""

    @dataclass
    class NoCopy(SmallKv):
        def kv_host_copy_s(self, tokens: int) -> float:
            return 0.0

    runs = []
    for model in (SmallKv(a100_8b, kv_capacity_tokens=1200, margin=8), NoCopy(a100_8b, kv_capacity_tokens=1200, margin=8)):
        inst, _, outs = _decode(model, 3, 300, 500)
        copied, now = [], 0.0
        while inst.has_work():
            dt = inst.start(now)
            copied.append(inst.copied)
            now += dt
            inst.finish(now)
        runs.append((inst, outs, copied))
    (inst, outs, copied), (plain, plain_outs, _) = runs
    per_token = a100_8b.kv_host_copy_s(1)
    assert per_token == pytest.approx(a100_8b.kv_bytes_per_token_per_gpu / 25e9)  # the A100's PCIe Gen4, as achieved
    # Request 2 leaves at iteration 100 with 101 tokens (its first came from its prefill) and the KV of its
    # prompt and 100 of them (the last one's is not written yet).
    assert copied[100] == 300 + 100
    # Copies happen exactly in the iterations that retract (a pause's first gap) or resume (its last).
    assert [i for i, c in enumerate(copied) if c] == sorted({it for p in outs.pauses for it in p[1:]})
    assert len(inst.durations) == len(plain.durations)  # the same schedule: only the time moves
    for i, (a, b) in enumerate(zip(inst.durations, plain.durations, strict=True)):
        assert a - b == pytest.approx(copied[i] * per_token, rel=1e-9, abs=1e-12)
    extra_s = sum(copied) * per_token
    assert extra_s > 0.008  # each copy moves 400+ tokens x 128 KiB at 25 GB/s: ~2 ms
    assert inst.record.busy_energy_j - plain.record.busy_energy_j == pytest.approx(extra_s * a100_8b.idle_power_w(1410))
    assert outs.finish_s[2] > plain_outs.finish_s[2]


def test_prefill_splits_a_long_prompt_over_the_chunk_budget(a100_8b):
    reqs = Requests([0.0, 0.0], [5000, 100], [10, 10])
    inst = PrefillInstance(0, StaticController(1410), CostCache(a100_8b, 4096), reqs, Outcomes.empty(2),
                           lambda: 1.0, 0.003, 0.0)
    inst.submit(0, 0.0)
    inst.submit(1, 0.0)
    dt = inst.start(0.0)
    assert dt is not None and inst._tokens == 4096 and inst._seqs == 1
    assert inst.finish(dt) == []  # request 0 still has 904 tokens to go
    dt2 = inst.start(dt)
    assert inst._tokens == 904 + 100 and inst._seqs == 2
    assert inst.finish(dt + dt2) == [0, 1]
    assert inst.queued_tokens == 0 and not inst.has_work()


def test_observation_carries_the_previous_iteration_as_feedback(a100_8b):
    seen: list[Observation] = []

    class Spy(StaticController):
        def decide(self, obs: Observation) -> int:
            seen.append(obs)
            return super().decide(obs)

    inst, _, _ = _decode(a100_8b, 4, 200, 3, controller=Spy(1410))
    drive(inst)
    assert seen[0].last_latency_s == 0 and seen[0].last_clock_mhz == 0
    assert seen[1].last_latency_s == pytest.approx(inst.durations[0])
    assert (seen[1].last_clock_mhz, seen[1].last_batch_size) == (1410, 4)


def test_idle_drop_changes_the_held_clock(a100_8b):
    """After the controller's idle timeout the instance holds the idle clock: iterations at that clock are not
    switches, and the idle power after the timeout is the low clock's."""

    class Scripted:
        idle_timeout_s = 1.0
        idle_clock_mhz = 1005

        def decide(self, obs: Observation) -> int:
            return 1410 if obs.now_s < 5 else 1005

        def on_idle_timeout(self) -> None:
            """Nothing to forget."""

    reqs = Requests([0.0, 10.0], [100, 100], [3, 4])
    inst = landing(DecodeInstance(0, Scripted(), CostCache(a100_8b, 8192), reqs, Outcomes.empty(2), lambda: 1.0,
                                  0.003, 0.0))
    deliver(inst, 0, 0.0)
    end = drive(inst)
    assert inst.clock == 1410 and inst.record.clock_switches == 1  # 1005 (idle) -> 1410
    deliver(inst, 1, 10.0)
    drive(inst, 10.0)
    assert inst.clock == 1005 and inst.record.clock_switches == 1  # the idle drop is not a switch
    expected = a100_8b.idle_power_w(1410) * 1.0 + a100_8b.idle_power_w(1005) * (10.0 - end - 1.0)
    assert inst.record.idle_energy_j == pytest.approx(expected)


def test_preallocation_keeps_a_margin_per_active_request_and_blocks_at_the_head(a100_8b):
    """SGLang's rule: the head of the queue gets its input KV while free KV - margin x active >= input + margin."""
    released: list[int] = []
    model = SmallKv(a100_8b, kv_capacity_tokens=3000)
    reqs = Requests([0.0] * 4, [400, 400, 100, 100], [10] * 4)
    inst = DecodeInstance(0, StaticController(1410), CostCache(model, 8192), reqs, Outcomes.empty(4), lambda: 1.0,
                          0.003, 0.0, on_preallocated=lambda rids, now: released.extend(rids))
    assert inst.margin == a100_8b.engine.decode_reserved_tokens == 512
    for rid in range(4):
        inst.route(rid)
    inst.preallocate(0.0)
    # 0 fits an idle instance; 1: 3000 - 400 - 512 = 2088 >= 912; 2: 3000 - 800 - 1024 = 1176 >= 612;
    # 3: 3000 - 900 - 1536 = 564 < 612: the head blocks.
    assert released == [0, 1, 2] and list(inst.prealloc) == [3]
    assert inst.allocated == 3 and inst.allocated_tokens == 900 and inst.inflight == 4
    inst.submit(0, 0.0)
    drive(inst, until=0.5)  # request 0 runs to completion and frees its KV
    inst.preallocate(1.0)
    assert released == [0, 1, 2, 3]


def test_an_idle_instance_always_preallocates_one_request(a100_8b):
    released: list[int] = []
    reqs = Requests([0.0], [5000], [10])
    inst = DecodeInstance(0, StaticController(1410), CostCache(SmallKv(a100_8b), 8192), reqs, Outcomes.empty(1),
                          lambda: 1.0, 0.003, 0.0, on_preallocated=lambda rids, now: released.extend(rids))
    inst.route(0)
    assert inst.start(0.0) is None  # a scheduler pass with no batch still pre-allocates
    assert released == [0]


@pytest.mark.parametrize("overlap", [True, False])
def test_prefill_overlap_fixes_the_next_batch_when_the_current_one_starts(a100_8b, overlap):
    """Under overlap scheduling a request that arrives during a busy iteration misses the batch formed at
    that iteration's start, unless nothing was queued then."""
    reqs = Requests([0.0] * 3, [100, 100, 100], [2] * 3)
    inst = PrefillInstance(0, StaticController(1410), CostCache(a100_8b, 8192), reqs, Outcomes.empty(3),
                           lambda: 1.0, 0.003, 0.0, overlap=overlap)
    inst.submit(0, 0.0)
    inst.submit(1, 0.0)
    dt = inst.start(0.0)  # batch: 0 and 1; nothing else queued
    inst.submit(2, dt / 2)  # arrives while it runs
    assert inst.finish(dt) == [0, 1]
    inst.start(dt)
    assert inst._seqs == 1  # nothing else was queued at the start, so request 2 runs next either way
    reqs = Requests([0.0] * 4, [100] * 4, [2] * 4)
    inst = PrefillInstance(0, StaticController(1410), CostCache(a100_8b, 150), reqs, Outcomes.empty(4),
                           lambda: 1.0, 0.003, 0.0, overlap=overlap)
    for rid in (0, 1):
        inst.submit(rid, 0.0)
    dt = inst.start(0.0)  # budget 150: request 0 and half of request 1; request 1 stays queued
    inst.submit(2, dt / 2)
    inst.finish(dt)
    inst.start(dt)
    # With overlap the next batch was fixed at t = 0 (request 1's rest only); without, request 2 joins it.
    assert inst._seqs == (1 if overlap else 2)


def test_an_aborted_decode_request_frees_its_place_wherever_it_is(a100_8b):
    """Running, waiting or pre-allocating: an abort frees the batch slot and the KV it held, and the instance
    goes on as if the request had never come."""
    model = SmallKv(a100_8b, kv_capacity_tokens=100_000, max_batch=3)
    inst, reqs, outs = _decode(model, 5, 300, 10)
    assert not inst.prealloc  # every request's KV was allocated; the batch limit holds two back
    dt = inst.start(0.0)
    inst.finish(dt)  # requests 0-2 running, 3 and 4 waiting
    assert inst.batch == 3 and list(inst.waiting) == [3, 4]
    kv_before = inst.kv_tokens
    assert inst.abort(1)  # running: its prompt and its one token so far are freed
    assert inst.batch == 2 and inst.kv_tokens == kv_before - 301
    assert inst.abort(4)  # waiting
    assert list(inst.waiting) == [3]
    end = drive(inst, dt)
    assert math.isnan(outs.finish_s[1]) and math.isnan(outs.finish_s[4])
    assert all(math.isfinite(outs.finish_s[i]) for i in (0, 2, 3)) and end > dt
    assert inst.batch == 0 and inst.kv_tokens == 0 and inst.allocated == 0
    v = inst.view()
    assert v.num_requests == 0 and v.queued_tokens == 0 and v.kv_tokens == 0


@pytest.mark.parametrize("when", ["retracted", "resumed"])
def test_an_aborted_request_that_was_retracted_frees_its_place(a100_8b, when):
    """A retracted request aborted while off the GPU leaves the retracted queue; one aborted after it resumed
    frees the KV it holds then. The others finish and the instance ends empty."""
    inst, _, outs = _decode(SmallKv(a100_8b, kv_capacity_tokens=1200, margin=8), 3, 300, 500)
    now = 0.0
    while not inst.retracted or (when == "resumed" and not outs.pauses):  # request 2 leaves at iteration 100
        now += inst.start(now)
        inst.finish(now)
    assert inst.abort(2)
    assert 2 not in [rid for rid, _, _ in inst.retracted]
    drive(inst, now)
    assert math.isnan(outs.finish_s[2]) and all(math.isfinite(outs.finish_s[i]) for i in (0, 1))
    assert inst.batch == 0 and inst.kv_tokens == 0
    v = inst.view()
    assert v.num_requests == 0 and v.queued_tokens == 0 and v.kv_tokens == 0


def test_an_aborted_request_whose_kv_is_in_flight_is_dropped_when_it_lands(a100_8b):
    reqs = Requests([0.0], [200], [5])
    inst = DecodeInstance(0, StaticController(1410), CostCache(a100_8b, 8192), reqs, Outcomes.empty(1),
                          lambda: 1.0, 0.003, 0.0)
    inst.route(0)
    inst.preallocate(0.0)  # allocated: its prefill may run, its KV is on the way
    assert inst.abort(0) and inst.allocated == 1
    inst.submit(0, 0.1)  # lands: dropped, its allocation freed
    assert inst.allocated == 0 and not inst.has_work() and inst.view().num_requests == 0


def test_an_aborted_prefill_leaves_the_queue_unless_it_already_ran(a100_8b):
    reqs = Requests([0.0, 0.0, 0.0], [5000, 100, 100], [10, 10, 10])
    inst = PrefillInstance(0, StaticController(1410), CostCache(a100_8b, 4096), reqs, Outcomes.empty(3),
                           lambda: 1.0, 0.003, 0.0, overlap=False)
    for rid in range(3):
        inst.submit(rid, 0.0)
    inst.start(0.0)  # request 0's first chunk runs
    assert not inst.abort(0)  # in the running batch
    assert inst.abort(2) and [item[0] for item in inst.queue] == [0, 1]
    assert inst.queued_tokens == 5100 and inst.view().num_requests == 2
