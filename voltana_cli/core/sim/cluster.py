"""Discrete-event simulator of a prefill/decode (P/D) disaggregated cluster.

N ``PrefillInstance``s and M ``DecodeInstance``s (``sim.instance``) form and cost their own iterations;
this module only orders events: arrivals (merged from the sorted arrival array), iteration ends, and KV
caches landing on their decode instance. When a request arrives, the policy's prefill router picks its
prefill instance and its decode router its decode instance (as SGLang's P/D routers do: the request is
posted to both at once); the decode instance pre-allocates its KV, which releases it to its prefill
instance; when its prefill completes, its KV cache travels to that decode instance. An engine spec with
``pd_handoff: after_prefill`` (the paper's testbed: fake KV transfer, the router posting the decode once the
prefill answered) starts the prefill at arrival instead, and hands the request to its decode instance when
the prefill ends: pre-allocation there is its KV's arrival. The
"real" GPU is the ground-truth ``InstanceModel`` times a per-iteration lognormal noise that the
controllers' predictor never sees.

Token timing: a request's first token (computed by its prefill) leaves its decode instance when that
instance admits it; every later token ends a decode iteration. The user sees each the engine spec's request
path later (``request_ingress_ms`` + ``token_egress_ms``: router, HTTP, streaming; a constant shift, so it is
added to the log's token times), and a pre-allocation releases its prefill ``bootstrap_latency_ms`` after it
happens (the handshake's message). So TTFT = admission - arrival + path, and its ITLs are the durations of
the ``output_tokens - 1`` decode iterations that follow (back to back while it runs).

Events are a heap of ``(time, sequence, kind, payload)``. Each run owns its ``numpy.random.Generator``:
same seed, same result.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.metrics import RequestLog
from voltana_cli.core.models import InstanceModel
from voltana_cli.core.policy import Policy
from voltana_cli.core.sim.instance import (
    ColocatedInstance,
    CostCache,
    DecodeInstance,
    Outcomes,
    PrefillInstance,
    Requests,
)
from voltana_cli.core.workloads import Workload

_PREFILL_DONE, _DECODE_DONE, _KV_ARRIVE, _RELEASE = 0, 1, 2, 3
_NOISE_CHUNK = 65536
MAX_INSTANCES = 1024  # per role: far beyond any P/D deployment, and bounds the per-request routing work
LAYOUTS = ("pd", "colocated")


@dataclass(frozen=True)
class ClusterConfig:
    """Shape and physics knobs of a simulated cluster.

    Attributes:
        n_prefill, n_decode: instances per role.
        noise: sigma of the per-iteration lognormal factor on time and energy (the "real" GPU's jitter).
        switch_ms: clock-switch latency; ``None``: the GPU spec's.
        chunked_prefill_tokens: prefill token budget per iteration; ``None``: the engine spec's.
        record_timeline: keep every clock change and iteration per instance (for timeline plots).
        layout: ``pd``: ``n_prefill`` prefill and ``n_decode`` decode instances; ``colocated``: the same GPUs as
            ``n_prefill + n_decode`` instances that each serve both phases (chunked prefill mixed into the
            decode batch), with no KV transfer.
    """

    n_prefill: int = 2
    n_decode: int = 2
    noise: float = 0.02
    switch_ms: float | None = None
    chunked_prefill_tokens: int | None = None
    record_timeline: bool = False
    layout: str = "pd"

    def validate(self) -> None:
        """Raise ``UserError`` naming the first field out of range."""
        for field, n in (("n_prefill", self.n_prefill), ("n_decode", self.n_decode)):
            role = field.removeprefix("n_")
            if n < 1:
                raise UserError(f"{n} {role} instances: need at least 1", field=field)
            if n > MAX_INSTANCES:
                raise UserError(f"{n} {role} instances is above the limit of {MAX_INSTANCES} per role", field=field)
        if not self.noise >= 0:
            raise UserError(f"{self.noise} must be a number >= 0", field="noise")
        if self.layout not in LAYOUTS:
            raise UserError(f"unknown layout {self.layout!r}: use one of {', '.join(LAYOUTS)}", field="layout")


class NoiseStream:
    """The ground truth's per-iteration noise factors, drawn in chunks from the run's generator.

    Calling the stream gives the next factor; ``next`` does the same at the cost of a C call (an
    ``itertools.chain`` over the chunks), for the simulator's inner loop. The first chunk is drawn at once.
    """

    def __init__(self, rng: np.random.Generator, sigma: float):
        self._rng, self._sigma = rng, sigma
        self.next: Callable[[], float] = itertools.chain.from_iterable(self._chunks(self._refill())).__next__

    def _chunks(self, first: list[float]) -> Iterator[list[float]]:
        yield first
        while True:
            yield self._refill()

    def _refill(self) -> list[float]:
        s = self._sigma
        if s > 0:
            return np.exp(s * self._rng.standard_normal(_NOISE_CHUNK) - 0.5 * s * s).tolist()
        return [1.0] * _NOISE_CHUNK

    def __call__(self) -> float:
        return self.next()


def _check_workload(workload: Workload, model: InstanceModel) -> None:
    if len(workload) == 0:
        raise UserError("the workload has no requests: give a longer duration, more requests or a higher rate",
                        field="workload")
    if np.any(np.diff(workload.arrival_s) < 0):
        raise ValueError("workload arrivals must be sorted")
    cap = model.kv_capacity_tokens
    biggest = int((workload.input_tokens.astype(np.int64) + workload.output_tokens).max())
    if biggest > cap:
        raise UserError(f"a request needs {biggest} KV tokens but a decode instance holds {cap}: raise the tensor "
                        "parallelism, or filter the dataset to shorter requests", field="workload")


class _Cluster:
    """The instances of one run and the event heap that drives them."""

    def __init__(self, workload: Workload, model: InstanceModel, policy: Policy, cluster: ClusterConfig,
                 rng: np.random.Generator):
        n = len(workload)
        self.requests = Requests(workload.arrival_s.astype(float).tolist(),
                                 workload.input_tokens.astype(np.int64).tolist(),
                                 workload.output_tokens.astype(np.int64).tolist())
        self.outcomes = Outcomes.empty(n)
        self.prefill_of = [-1] * n
        self.decode_of = [-1] * n
        budget = cluster.chunked_prefill_tokens or model.engine.chunked_prefill_tokens
        costs = CostCache(model, budget)
        switch_s = (model.gpu.clock_switch_ms if cluster.switch_ms is None else cluster.switch_ms) / 1e3
        noise = NoiseStream(rng, cluster.noise)
        t0 = self.requests.arrival_s[0]
        rec = cluster.record_timeline
        common = (costs, self.requests, self.outcomes, noise.next, switch_s, t0, rec)
        self.prefills: list[PrefillInstance] = []
        self.decodes: list[DecodeInstance] = []
        self.mixed: list[ColocatedInstance] = []
        # The instances whose iterations end in a decode token (P/D: the decode ones; colocated: all), by index.
        self.runners: list[DecodeInstance] | list[ColocatedInstance]
        # P/D: the router posts each request to its decode instance at arrival (bootstrap), or once its
        # prefill has answered (after_prefill: no KV moves, pre-allocation is the KV's arrival).
        self.after_prefill = model.engine.pd_handoff == "after_prefill"
        if cluster.layout == "colocated":
            # The same GPUs, each instance serving both phases; its one controller is the policy's decode one.
            self.mixed = self.runners = [ColocatedInstance(i, policy.make_decode_controller(), *common)
                                         for i in range(cluster.n_prefill + cluster.n_decode)]
        else:
            overlap = model.engine.prefill_overlap_schedule
            self.prefills = [PrefillInstance(i, policy.make_prefill_controller(), *common, overlap=overlap)
                             for i in range(cluster.n_prefill)]
            # Their callbacks are set by the event loop (``_loop_pd``), whose state they share.
            self.decodes = [DecodeInstance(i, policy.make_decode_controller(), *common)
                            for i in range(cluster.n_decode)]
            self.runners = self.decodes
        for c in {inst.clock for inst in (*self.prefills, *self.runners)}:
            model.check_clock(c)
        self.router = policy.decode_router
        self.prefill_router = policy.prefill_router
        self.prefill_views = [x.view() for x in self.prefills]  # kept current by the instances
        self.decode_views = [x.view() for x in self.runners]
        self.model = model
        # (time, sequence, kind, payload): an instance index, or a prefill batch's KV landings (``_KV_ARRIVE``)
        self.heap: list[tuple[float, int, int, Any]] = []
        # Numbers the events pushed on the heap, from 1 (ties at one time pop in push order).
        self._seq = itertools.count(1)
        self._transfer: dict[int, float] = {}
        self.events = 0

    def _transfer_s(self, tokens: int) -> float:
        """The ground truth's KV transfer time, memoised per input length (a pure function of it); with the
        after-prefill handoff no KV moves and it is the router's second post, the fixed latency alone."""
        t = self._transfer.get(tokens)
        if t is None:
            e = self.model.engine
            t = e.kv_transfer_latency_ms / 1e3 if self.after_prefill else self.model.kv_transfer_s(tokens)
            self._transfer[tokens] = t
        return t

    def run(self) -> None:
        """Process every event until the last request finishes.

        Arrivals come from the sorted arrival list (an event at the same time as an arrival goes first);
        everything else from the heap. Python's cyclic garbage collector is paused meanwhile: the loop makes
        many short-lived containers and no reference cycles, so its passes would only cost time.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.events = self._loop_colocated() if self.mixed else self._loop_pd()
        finally:
            if gc_was_enabled:
                gc.enable()

    # The event loops below are written for speed: the handlers are inlined, or local closures over the
    # loop's state (no attribute lookups on ``self`` per event). Each processes arrivals from the sorted
    # arrival list, after the heap's events up to their time (an event at the same time as an arrival goes
    # first), then the heap's remaining ones; they return the number of events processed.

    def _loop_pd(self) -> int:
        """The event loop of a P/D cluster.

        Like SGLang's P/D routers, both instances are picked when a request arrives: the decode instance
        counts it as routed (in flight) from now on, through its prefill and its KV transfer. Bootstrap: the
        request queues at once for pre-allocation on its decode instance (an idle one pre-allocates at once,
        a scheduler pass with no batch), which releases it to its prefill instance; when its prefill ends its
        KV travels to the decode instance. After-prefill: the prefill starts at once, ungated by the decode's
        memory; when it ends the request is posted to its decode instance, where it queues for
        pre-allocation, which is its KV's arrival (same scheduler pass).
        """
        heap = self.heap
        pop, push = heapq.heappop, heapq.heappush
        next_seq = self._seq.__next__
        prefills, decodes = self.prefills, self.decodes
        prefill_of, decode_of = self.prefill_of, self.decode_of
        choose_prefill, choose_decode = self.prefill_router.choose, self.router.choose
        prefill_views, decode_views = self.prefill_views, self.decode_views
        arrivals, inp = self.requests.arrival_s, self.requests.input_tokens
        transfer, transfer_s = self._transfer, self._transfer_s
        after_prefill = self.after_prefill
        bootstrap_s = self.model.engine.bootstrap_latency_ms / 1e3

        def start_prefill(p: int, now: float) -> None:
            dt = prefills[p].start(now)
            if dt is not None:
                push(heap, (now + dt, next_seq(), _PREFILL_DONE, p))

        def start_decode(d: int, now: float) -> None:
            dt = decodes[d].start(now)
            if dt is not None:
                push(heap, (now + dt, next_seq(), _DECODE_DONE, d))

        def release(rids: list[int], now: float) -> None:
            # The decode instance holds KV for these requests: their prefill instances may now schedule them.
            for rid in rids:
                p = prefill_of[rid]
                inst = prefills[p]
                inst.submit(rid, now)
                if not inst.busy:
                    start_prefill(p, now)

        def preallocated(rids: list[int], now: float) -> None:
            # The prefill instances learn of it the handshake's latency later.
            push(heap, (now + bootstrap_s, next_seq(), _RELEASE, rids))

        def landed(rids: list[int], now: float) -> None:
            # No KV moves (a fake transfer backend): pre-allocation is the KV's arrival, in the same pass.
            for rid in rids:
                decodes[decode_of[rid]].submit(rid, now)

        def first_tokens(rids: list[int], now: float) -> None:
            # The prefill instance that served each request learns its TTFT (feedback for its controller).
            for rid in rids:
                prefills[prefill_of[rid]].recent_ttft_s = now - arrivals[rid]

        for dec in decodes:
            dec.on_first_tokens = first_tokens
            dec.on_preallocated = landed if after_prefill else preallocated if bootstrap_s > 0 else release

        last_t = -math.inf
        for rid, at in itertools.chain(enumerate(arrivals), ((-1, math.inf),)):
            while heap and heap[0][0] <= at:
                now, _, kind, x = pop(heap)
                if now < last_t:  # pragma: no cover - an invariant, tested
                    raise RuntimeError("simulation time went backwards")
                last_t = now
                if kind == _KV_ARRIVE:
                    # x: the landings still to come of one prefill batch's KV caches, latest first; the last one
                    # lands now. Each following one is the next event when it comes before the heap's first and
                    # not after the next arrival: it is processed here, at its time, without a trip through the
                    # heap; else it goes back on the heap as the batch's entry.
                    while True:
                        r = x.pop()[2]
                        d = decode_of[r]
                        inst = decodes[d]
                        if after_prefill:
                            inst.enqueue(r)  # it queues for pre-allocation
                        else:
                            inst.submit(r, now)
                        if not inst.busy:
                            start_decode(d, now)
                        if not x:
                            break
                        t, seq, _ = x[-1]
                        if t > at or (heap and (t > heap[0][0] or (t == heap[0][0] and seq > heap[0][1]))):
                            push(heap, (t, seq, _KV_ARRIVE, x))
                            break
                        now = last_t = t
                elif kind == _RELEASE:
                    release(x, now)
                elif kind == _DECODE_DONE:
                    inst = decodes[x]
                    inst.finish(now)
                    if inst.batch or inst.waiting or inst.prealloc or inst.retracted:  # has_work(), inlined
                        dt = inst.start(now)  # start_decode(x, now), inlined
                        if dt is not None:
                            push(heap, (now + dt, next_seq(), _DECODE_DONE, x))
                else:  # _PREFILL_DONE
                    pre = prefills[x]
                    done = pre.finish(now)
                    if done:
                        # Their KV caches travel to their decode instances, each landing at its own time with its
                        # own sequence number (as its own event would); one heap entry carries them all.
                        landings = []
                        for r in done:
                            t = transfer.get(inp[r])
                            if t is None:
                                t = transfer_s(inp[r])
                            landings.append((now + t, next_seq(), r))
                        landings.sort(reverse=True)  # latest first: the next one to land is popped off the end
                        t, seq, _ = landings[-1]
                        push(heap, (t, seq, _KV_ARRIVE, landings))
                    if pre.queue:  # has_work(), inlined
                        start_prefill(x, now)
            if rid < 0:
                break
            last_t = at
            n_in = inp[rid]
            p = prefill_of[rid] = choose_prefill(n_in, prefill_views)
            d = decode_of[rid] = choose_decode(n_in, decode_views)
            if after_prefill:  # the prefill starts at once; the decode instance gets the request after it
                decodes[d].route(rid, enqueue=False)
                pre = prefills[p]
                pre.submit(rid, at)
                if not pre.busy:
                    start_prefill(p, at)
            else:
                inst = decodes[d]
                inst.route(rid)
                if not inst.busy:  # an idle decode instance pre-allocates at once (a scheduler pass with no batch)
                    start_decode(d, at)
        # The heap is empty: every event pushed on it was processed, besides each arrival.
        return len(arrivals) + next_seq() - 1  # the next number less one: the events pushed

    def _loop_colocated(self) -> int:
        """The event loop of a colocated cluster: one instance serves each request from prompt to last token
        (the decode router picks it)."""
        heap = self.heap
        pop, push = heapq.heappop, heapq.heappush
        next_seq = self._seq.__next__
        mixed, prefill_of, decode_of = self.mixed, self.prefill_of, self.decode_of
        choose, views = self.router.choose, self.decode_views
        arrivals, inp = self.requests.arrival_s, self.requests.input_tokens
        last_t = -math.inf
        for rid, at in itertools.chain(enumerate(arrivals), ((-1, math.inf),)):
            while heap and heap[0][0] <= at:
                now, _, _, d = pop(heap)  # every event is an iteration's end
                if now < last_t:  # pragma: no cover - an invariant, tested
                    raise RuntimeError("simulation time went backwards")
                last_t = now
                inst = mixed[d]
                inst.finish(now)
                if inst.has_work():
                    dt = inst.start(now)
                    if dt is not None:
                        push(heap, (now + dt, next_seq(), _DECODE_DONE, d))
            if rid < 0:
                break
            last_t = at
            d = decode_of[rid] = prefill_of[rid] = choose(inp[rid], views)
            inst = mixed[d]
            inst.submit(rid, at)
            if not inst.busy:
                dt = inst.start(at)
                if dt is not None:
                    push(heap, (at + dt, next_seq(), _DECODE_DONE, d))
        # The heap is empty: every event pushed on it was processed, besides each arrival.
        return len(arrivals) + next_seq() - 1  # the next number less one: the events pushed

    def log(self, workload: Workload) -> RequestLog:
        """The run's request log (closing every instance's idle time at the last completion)."""
        o = self.outcomes
        finish = _array(o.finish_s, float)
        stuck = np.flatnonzero(np.isnan(finish))
        if len(stuck):  # pragma: no cover - an invariant of the scheduler, tested
            raise RuntimeError(f"{len(stuck)} requests never finished (first: {int(stuck[0])})")
        end = float(finish.max())
        for inst in (*self.prefills, *self.runners):
            inst.end_idle(end)
        out = workload.output_tokens.astype(np.int64)
        decode_of = _array(self.decode_of, np.int64)
        # The client sees each token the request path's ingress and egress later than the scheduler emits it.
        path = self.model.engine.path_s
        return RequestLog(
            arrival_s=workload.arrival_s.astype(float), input_tokens=workload.input_tokens.astype(np.int64),
            output_tokens=out, first_token_s=_array(o.first_token_s, float) + path, finish_s=finish + path,
            prefill_instance=_array(self.prefill_of, np.int64), decode_instance=decode_of, gap_stream=decode_of,
            gap_start=_array(o.first_iter, np.int64), gap_count=np.maximum(out - 1, 0),
            streams=[_array(d.durations, float) for d in self.runners],
            stream_weights=[_array(d.batches, float) for d in self.runners],
            instances=[inst.record for inst in (*self.prefills, *self.runners)],
            start_s=float(workload.arrival_s[0]), end_s=end, events=self.events,
            pauses=np.array(o.pauses, dtype=np.int64).reshape(-1, 3),
        )


def _array(values: list, dtype: type) -> np.ndarray:
    """A list of Python numbers as a new 1-d array of ``dtype`` (``fromiter``: faster than ``np.array`` on a
    long list)."""
    return np.fromiter(values, dtype, len(values))


def simulate(workload: Workload, model: InstanceModel, policy: Policy, cluster: ClusterConfig,
             rng: np.random.Generator) -> RequestLog:
    """Run ``workload`` through a P/D cluster under ``policy``; deterministic for a given ``rng`` state.

    Args:
        workload: the requests, sorted by arrival.
        model: the ground truth (analytical model or a profile's interpolant).
        policy: controllers and decode router, built from the policy registry.
        cluster: the cluster's shape and physics knobs.
        rng: the run's generator (the ground truth's noise).

    Returns:
        The run's ``RequestLog``; ``metrics.summarize`` turns it into figures.
    """
    cluster.validate()
    _check_workload(workload, model)
    c = _Cluster(workload, model, policy, cluster, rng)
    c.run()
    return c.log(workload)
