"""One serving instance's scheduler: queue, chunked-prefill budget, KV capacity, continuous batching.

An ``Instance`` is driven from outside with "now": ``start(now)`` forms the next iteration from what is
queued, asks the instance's frequency controller for a clock, and returns how long the iteration runs;
``finish(now)`` applies its result. The simulator's event loop calls them at event times; the emulated
engine of ``serve --engine sim`` calls the same methods from wall time. Nothing here knows the event heap.

Accounting is written once, in ``Instance``: idle power between iterations (with the controller's idle
drop), the clock switch (the iteration runs at the old clock until the switch lands), the ground truth's
noise, busy energy and clock residency. ``PrefillInstance`` and ``DecodeInstance`` only say how their batch
is formed and what it costs at a clock.

Requests are integer ids into a shared ``Requests`` table (arrival, input and output tokens), which a
wall-clock engine appends to as requests come in; outcomes go to a ``RequestLog``-shaped ``Outcomes``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from voltana_cli.core.metrics import InstanceRecord
from voltana_cli.core.models import InstanceModel
from voltana_cli.core.policy import FrequencyController, InstanceView, Observation

RATE_TAU_S = 1.0  # time constant of the per-instance arrival-rate estimate given to controllers


@dataclass
class Requests:
    """The requests an instance may refer to, by id (lists, so a live engine can append)."""

    arrival_s: list[float] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)


@dataclass
class Outcomes:
    """What instances record per request id: first token, finish, decode iteration of the first ITL."""

    first_token_s: list[float] = field(default_factory=list)
    finish_s: list[float] = field(default_factory=list)
    first_iter: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> Outcomes:
        return cls([math.nan] * n, [math.nan] * n, [-1] * n)


class CostCache:
    """Per-clock cost tables of the ground truth, shared by the instances of one run.

    Args:
        model: the ground truth (analytical model or a profile's interpolant).
        prefill_budget: the chunked-prefill token budget (the largest prefill iteration).
    """

    def __init__(self, model: InstanceModel, prefill_budget: int):
        self.model = model
        self.budget = prefill_budget
        self._dec: dict[int, tuple[list[float], list[float], float, float]] = {}
        self._pre: dict[int, tuple[list[float], list[float], float, float, float, float]] = {}
        self._idle: dict[int, float] = {}

    def decode(self, clock: int) -> tuple[list[float], list[float], float, float]:
        t = self._dec.get(clock)
        if t is None:
            tb = self.model.decode_table(clock)
            t = self._dec[clock] = (tb.t0, tb.e0, tb.t_kv, tb.e_kv)
        return t

    def prefill(self, clock: int) -> tuple[list[float], list[float], float, float, float, float]:
        t = self._pre.get(clock)
        if t is None:
            tb = self.model.prefill_table(clock, self.budget)
            t = self._pre[clock] = (tb.tg, tb.eg, tb.t_seq, tb.e_seq, tb.t_pair, tb.e_pair)
        return t

    def idle_w(self, clock: int) -> float:
        p = self._idle.get(clock)
        if p is None:
            p = self._idle[clock] = self.model.idle_power_w(clock)
        return p


class Instance:
    """The shared part of a prefill or decode instance: the clock, the meter and the iteration cycle.

    Args:
        role: ``"prefill"`` or ``"decode"``.
        index: index within its role.
        controller: the instance's frequency controller.
        costs: the ground truth's cost tables.
        requests: the request table.
        outcomes: where per-request outcomes go.
        noise: returns the next multiplicative noise factor of the ground truth (1.0: exact).
        switch_s: time for a clock change to land.
        start_s: when the instance starts existing (idle until its first iteration).
        record_timeline: keep every clock change in ``record.timeline``.
    """

    def __init__(self, role: str, index: int, controller: FrequencyController, costs: CostCache, requests: Requests,
                 outcomes: Outcomes, noise: Callable[[], float], switch_s: float, start_s: float,
                 record_timeline: bool = False):
        self.role, self.index = role, index
        self.controller = controller
        self.costs = costs
        self.requests, self.outcomes = requests, outcomes
        self.noise = noise
        self.switch_s = switch_s
        self.record_timeline = record_timeline
        self.record = InstanceRecord(role, index, timeline=[(start_s, controller.idle_clock_mhz)])
        self.clock = controller.idle_clock_mhz
        self.last_s = start_s  # end of the previous iteration: idle since then
        self.busy = False
        self.rate = 0.0  # arrival-rate estimate (req/s) as of rate_t
        self.rate_t = 0.0
        self.last_latency_s = 0.0
        self.last_clock = 0
        self.last_batch = 0
        self.last_tokens = 0
        self._view = InstanceView(index, 0, 0, self.clock)
        self.durations: list[float] = []  # every iteration's duration (s), in order
        self.batches: list[int] = []  # and its batch size (decode: the requests that got a token from it)

    # ---- what a role defines ------------------------------------------------------------------------
    def form(self, now: float) -> Observation | None:
        """Form the next iteration from the queue; ``None`` when there is nothing to run."""
        raise NotImplementedError

    def cost(self, clock: int) -> tuple[float, float]:
        """Latency (s) and energy (J) of the formed iteration at ``clock``, before noise."""
        raise NotImplementedError

    def has_work(self) -> bool:
        """Whether a scheduler pass (``start``) could do anything now; a driver runs one when it is."""
        raise NotImplementedError

    # ---- shared accounting ---------------------------------------------------------------------------
    def rate_at(self, now: float) -> float:
        """The arrival-rate estimate decayed to ``now``."""
        return self.rate * math.exp((self.rate_t - now) / RATE_TAU_S)

    def account_idle(self, now: float) -> int:
        """Charge idle power from the end of the last iteration to ``now``; returns the clock held now."""
        gap = now - self.last_s
        clock = self.clock
        if gap <= 0:
            return clock
        rec, ctl, costs = self.record, self.controller, self.costs
        rec.idle_s += gap
        to = ctl.idle_timeout_s
        if gap <= to:
            rec.idle_energy_j += costs.idle_w(clock) * gap
            return clock
        rec.idle_energy_j += costs.idle_w(clock) * to
        ctl.on_idle_timeout()
        low = ctl.idle_clock_mhz
        rec.idle_energy_j += costs.idle_w(low) * (gap - to)
        if self.record_timeline and low != clock:
            rec.timeline.append((self.last_s + to, low))
        self.clock = low
        return low

    def start(self, now: float) -> float | None:
        """Form and start the next iteration at ``now``; returns its duration (s), or ``None`` when idle."""
        cur = self.account_idle(now) if now > self.last_s else self.clock
        obs = self.form(now)
        if obs is None:
            self.busy = False
            self.last_s = now
            return None
        new = self.controller.decide(obs)
        dt, de = self.cost(new)
        rec = self.record
        if new != cur:
            rec.clock_switches += 1
            dt_old, de_old = self.cost(cur)
            x = self.switch_s if self.switch_s < dt_old else dt_old
            frac = x / dt_old
            dt = x + (1.0 - frac) * dt
            de = de_old * frac + de * (1.0 - frac)
            if self.record_timeline:
                rec.timeline.append((now + x, new))
            self.clock = new
        f = self.noise()
        dt *= f
        de *= f
        rec.busy_energy_j += de
        rec.busy_s += dt
        rec.iterations += 1
        cb = rec.clock_busy_s
        cb[new] = cb.get(new, 0.0) + dt
        self.busy = True
        self.last_latency_s, self.last_clock = dt, new
        self.last_batch, self.last_tokens = obs.batch_size, obs.num_tokens
        self.durations.append(dt)
        self.batches.append(obs.batch_size)
        return dt

    def end_idle(self, now: float) -> None:
        """Close the run at ``now``: charge the idle time since the last iteration."""
        self.account_idle(now)
        self.last_s = now


class PrefillInstance(Instance):
    """A prefill instance: requests queue; each iteration takes chunks from the head of the queue up to the
    chunked-prefill budget (a request longer than what is left of the budget is split across iterations).

    Overlap scheduling, on by default in SGLang's P/D prefill loop (``event_loop_overlap_disagg_prefill``):
    the next batch is formed while the current one runs, from the requests queued when the current one
    started. So a request that arrives during a busy iteration waits for the next one as well, unless nothing
    else was queued then (``docs/notes/sglang-pd-scheduler.md``). ``overlap=False`` forms each batch when the
    previous one ends.
    """

    def __init__(self, index: int, controller: FrequencyController, costs: CostCache, requests: Requests,
                 outcomes: Outcomes, noise: Callable[[], float], switch_s: float, start_s: float,
                 record_timeline: bool = False, overlap: bool = True):
        super().__init__("prefill", index, controller, costs, requests, outcomes, noise, switch_s, start_s,
                         record_timeline)
        self.overlap = overlap
        self._visible = 0  # queue entries the scheduler had seen when the running iteration started
        self.queue: deque[list[int]] = deque()  # [request id, tokens left, tokens done]
        self.queued_tokens = 0
        self.recent_ttft_s = 0.0
        self._chunks: list[int] = []
        self._tokens = 0
        self._seqs = 0
        self._pairs = 0.0

    def view(self) -> InstanceView:
        """What a router may know of this instance now: queued requests and tokens, and the clock (one view
        object per instance, refreshed on each call: a router reads it during its call only)."""
        v = self._view
        v.num_requests, v.queued_tokens, v.clock_mhz = len(self.queue), self.queued_tokens, self.clock
        return v

    def submit(self, rid: int, now: float) -> None:
        """A request arrives at this instance."""
        n = self.requests.input_tokens[rid]
        self.queue.append([rid, n, 0])
        self.queued_tokens += n
        self.rate = self.rate * math.exp((self.rate_t - now) / RATE_TAU_S) + 1.0 / RATE_TAU_S
        self.rate_t = now

    def has_work(self) -> bool:
        return bool(self.queue)

    def form(self, now: float) -> Observation | None:
        q = self.queue
        if not q:
            return None
        left = self.costs.budget
        tokens = 0
        pairs = 0.0
        chunks = self._chunks
        chunks.clear()
        # Under overlap, the batch was fixed when the previous iteration started: only the entries queued
        # then may join it (none queued then: the batch is formed now, from everything).
        limit = self._visible if self.overlap and self._visible > 0 else len(q)
        for i, item in enumerate(q):
            if i >= limit:
                break
            c = item[1] if item[1] < left else left
            off = item[2]
            pairs += c * (off + (c + 1) * 0.5)
            chunks.append(c)
            tokens += c
            left -= c
            if left <= 0:
                break
        nseq = len(chunks)
        self._tokens, self._seqs, self._pairs = tokens, nseq, pairs
        self._visible = len(q)
        return Observation(now, nseq, tokens, len(q) - nseq, now - self.requests.arrival_s[q[0][0]], self.rate_at(now),
                           self.last_latency_s, self.last_clock, self.last_batch, self.last_tokens, self.recent_ttft_s)

    def cost(self, clock: int) -> tuple[float, float]:
        tg, eg, ts, es, tp, ep = self.costs.prefill(clock)
        t, n, p = self._tokens, self._seqs, self._pairs
        return tg[t] + n * ts + p * tp, eg[t] + n * es + p * ep

    def finish(self, now: float) -> list[int]:
        """The running iteration ended at ``now``: returns the requests whose prefill completed, in order."""
        q = self.queue
        done: list[int] = []
        for c in self._chunks:
            item = q[0]
            item[1] -= c
            item[2] += c
            self.queued_tokens -= c
            if item[1] == 0:
                q.popleft()
                done.append(item[0])
        self._visible -= len(done)
        self.busy = False
        self.last_s = now
        return done


class DecodeInstance(Instance):
    """A P/D decode instance: KV pre-allocation that gates prefill, then continuous batching.

    As SGLang's decode scheduler does (``docs/notes/sglang-pd-scheduler.md``): a request routed here waits
    in a pre-allocation queue; at each iteration boundary (or at once when the instance is idle) the head of
    that queue gets its input's KV allocated while the free KV, less ``decode_reserved_tokens`` per active
    request, still fits it plus that margin (first come, first served; the head blocks the rest; an idle
    instance always takes one). Only then may its prefill instance schedule it (``on_preallocated``): decode
    memory pressure backs up into the prefill queues. Its KV cache then arrives and waits; at each
    iteration boundary waiting requests are admitted in order while the batch is below ``max_batch`` and
    their input + output tokens fit the capacity beside the running requests' (one is always admitted into
    an empty batch) — the reservation stands in for SGLang's retraction of running requests when the pool
    fills. Admission delivers the request's first token (its prefill computed it); every later token ends
    an iteration.
    """

    def __init__(self, index: int, controller: FrequencyController, costs: CostCache, requests: Requests,
                 outcomes: Outcomes, noise: Callable[[], float], switch_s: float, start_s: float,
                 record_timeline: bool = False, on_first_token: Callable[[int, float], None] | None = None,
                 on_preallocated: Callable[[int, float], None] | None = None):
        super().__init__("decode", index, controller, costs, requests, outcomes, noise, switch_s, start_s,
                         record_timeline)
        self.capacity = costs.model.kv_capacity_tokens
        self.max_batch = costs.model.max_batch
        self.margin = costs.model.engine.decode_reserved_tokens
        self.on_first_token = on_first_token
        self.on_preallocated = on_preallocated
        self.prealloc: deque[int] = deque()  # routed here, KV not yet allocated: their prefill may not start
        self.allocated = 0  # requests with KV allocated that are not running yet (in prefill, transfer, waiting)
        self.allocated_tokens = 0  # their input tokens
        self.waiting: deque[int] = deque()
        self.waiting_tokens = 0
        self.inflight = 0  # routed here, KV cache not arrived yet (pre-allocating, in prefill or in transit)
        self._running: list[tuple[int, int]] = []  # heap of (index of its last iteration, request id)
        self.batch = 0
        self.kv_tokens = 0
        self.reserved = 0  # input + output tokens of the running requests
        self.iteration = 0

    def view(self) -> InstanceView:
        """What a router may know of this instance now (one view object per instance, refreshed on each
        call: a router reads it during its call only)."""
        v = self._view
        v.num_requests = self.batch + len(self.waiting) + self.inflight
        v.queued_tokens, v.clock_mhz = self.reserved + self.waiting_tokens, self.clock
        return v

    def route(self, rid: int) -> None:
        """Request ``rid`` was routed here: it waits for its KV to be pre-allocated."""
        self.inflight += 1
        self.prealloc.append(rid)

    def preallocate(self, now: float) -> None:
        """Allocate input KV to the head of the pre-allocation queue while it fits (see the class docstring)."""
        q = self.prealloc
        if not q:
            return
        inp = self.requests.input_tokens
        free = self.capacity - self.kv_tokens - self.allocated_tokens
        active = self.batch + self.allocated
        m = self.margin
        while q:
            n = inp[q[0]]
            if active and free - m * active < n + m:
                break
            rid = q.popleft()
            self.allocated += 1
            self.allocated_tokens += n
            free -= n
            active += 1
            if self.on_preallocated is not None:
                self.on_preallocated(rid, now)

    def submit(self, rid: int, now: float) -> None:
        """A routed request's KV cache arrived: it waits for admission."""
        r = self.requests
        self.inflight -= 1
        self.waiting.append(rid)
        self.waiting_tokens += r.input_tokens[rid] + r.output_tokens[rid]
        self.rate = self.rate * math.exp((self.rate_t - now) / RATE_TAU_S) + 1.0 / RATE_TAU_S
        self.rate_t = now

    def has_work(self) -> bool:
        return self.batch > 0 or bool(self.waiting) or bool(self.prealloc)

    def _admit(self, now: float) -> None:
        w, r, o = self.waiting, self.requests, self.outcomes
        inp, out = r.input_tokens, r.output_tokens
        it = self.iteration
        while w:
            rid = w[0]
            need = inp[rid] + out[rid]
            if (self.reserved + need > self.capacity and self.batch > 0) or self.batch >= self.max_batch:
                break
            w.popleft()
            self.waiting_tokens -= need
            self.allocated -= 1
            self.allocated_tokens -= inp[rid]
            o.first_token_s[rid] = now
            if self.on_first_token is not None:
                self.on_first_token(rid, now)
            if out[rid] <= 1:
                o.finish_s[rid] = now
                continue
            o.first_iter[rid] = it
            self.batch += 1
            self.kv_tokens += inp[rid]
            self.reserved += need
            heapq.heappush(self._running, (it + out[rid] - 2, rid))

    def form(self, now: float) -> Observation | None:
        self.preallocate(now)
        self._admit(now)
        if self.batch == 0:
            return None
        return Observation(now, self.batch, self.kv_tokens, len(self.waiting), 0.0, self.rate_at(now),
                           self.last_latency_s, self.last_clock, self.last_batch, self.last_tokens)

    def cost(self, clock: int) -> tuple[float, float]:
        t0, e0, tk, ek = self.costs.decode(clock)
        b, k = self.batch, self.kv_tokens
        return t0[b] + k * tk, e0[b] + k * ek

    def finish(self, now: float) -> None:
        """The running iteration ended at ``now``: every running request got a token; some completed."""
        it = self.iteration
        run = self._running
        r = self.requests
        self.kv_tokens += self.batch
        while run and run[0][0] == it:
            _, rid = heapq.heappop(run)
            self.outcomes.finish_s[rid] = now
            n = r.input_tokens[rid] + r.output_tokens[rid]
            self.batch -= 1
            self.kv_tokens -= n - 1
            self.reserved -= n
        self.iteration = it + 1
        self.busy = False
        self.last_s = now
