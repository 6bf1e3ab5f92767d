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

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from math import exp
from types import FunctionType
from typing import Any

from voltana_cli.core.metrics import InstanceRecord
from voltana_cli.core.models import InstanceModel
from voltana_cli.core.policy import FrequencyController, InstanceView, Observation
from voltana_cli.core.policy.controller import RATE_TAU_S

_RATE_STEP = 1.0 / RATE_TAU_S  # what one arrival adds to the estimate
_FILLED_S = 30.0 * RATE_TAU_S  # after this the smoothing's start no longer shows (exp(-30) ~ 1e-13)


@dataclass
class Requests:
    """The requests an instance may refer to, by id (lists, so a live engine can append)."""

    arrival_s: list[float] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)


@dataclass
class Outcomes:
    """What instances record per request id: first token, finish, decode iteration of the first ITL; and
    every pause of a request its decode instance retracted: ``(request id, the first iteration it sat out,
    the iteration that gave it its next token)``."""

    first_token_s: list[float] = field(default_factory=list)
    finish_s: list[float] = field(default_factory=list)
    first_iter: list[int] = field(default_factory=list)
    pauses: list[tuple[int, int, int]] = field(default_factory=list)

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
        # The tables built so far by clock; an instance reads these first (one dict lookup per iteration).
        self.decode_tables: dict[int, tuple[list[float], list[float], float, float]] = {}
        self.prefill_tables: dict[int, tuple[list[float], list[float], float, float, float, float]] = {}
        self._idle: dict[int, float] = {}
        self.host_copy_s_per_token = model.kv_host_copy_s(1)  # a retracted request's KV to host memory and back

    def decode(self, clock: int) -> tuple[list[float], list[float], float, float]:
        t = self.decode_tables.get(clock)
        if t is None:
            tb = self.model.decode_table(clock)
            t = self.decode_tables[clock] = (tb.t0, tb.e0, tb.t_kv, tb.e_kv)
        return t

    def prefill(self, clock: int) -> tuple[list[float], list[float], float, float, float, float]:
        t = self.prefill_tables.get(clock)
        if t is None:
            tb = self.model.prefill_table(clock, self.budget)
            t = self.prefill_tables[clock] = (tb.tg, tb.eg, tb.t_seq, tb.e_seq, tb.t_pair, tb.e_pair)
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
        record_timeline: keep every clock change in ``record.timeline`` and every iteration in ``record.trace``.
    """

    # Slots: each role has more attributes than CPython keeps in a compact per-class layout (30), past which
    # every instance falls back to a dict and method calls on it go unspecialised (a slow lookup per call).
    __slots__ = ("role", "index", "controller", "_reads_truth", "costs", "requests", "outcomes", "noise", "switch_s",
                 "record_timeline", "record", "clock", "last_s", "busy", "rate", "rate_t", "last_latency_s",
                 "last_clock", "last_batch", "last_tokens", "_view", "durations", "batches")

    def __init__(self, role: str, index: int, controller: FrequencyController, costs: CostCache, requests: Requests,
                 outcomes: Outcomes, noise: Callable[[], float], switch_s: float, start_s: float,
                 record_timeline: bool = False):
        self.role, self.index = role, index
        self.controller = controller
        self._reads_truth = bool(getattr(controller, "reads_truth", False))  # only a yardstick reads the truth
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
        self._view = InstanceView(index, 0, 0, self.clock)  # kept current by every change it shows
        self.durations: list[float] = []  # every iteration's duration (s), in order
        self.batches: list[int] = []  # and its batch size (decode: the requests that got a token from it)

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Each role runs its own copy of the shared cycle. CPython specialises attribute lookups per code
        # object and per class; one copy shared by both roles would see both classes at every site (their
        # iterations interleave) and keep falling back to the generic, slower lookups.
        super().__init_subclass__(**kwargs)
        for name in _PER_ROLE:
            if name not in cls.__dict__:
                setattr(cls, name, _copy_function(getattr(Instance, name)))

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
        """The arrival-rate estimate decayed to ``now``, corrected for the weight its smoothing has filled
        since the world's start (time 0): early on it is the arrivals so far over the time so far, not a sum
        still rising from 0 (``Observation.rate_rps``)."""
        r = self.rate * exp((self.rate_t - now) / RATE_TAU_S)
        if now < _FILLED_S:
            r /= 1.0 - exp(-now / RATE_TAU_S) if now > 0 else 1.0
        return r

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
        self.clock = self._view.clock_mhz = low
        return low

    def start(self, now: float) -> float | None:
        """Form and start the next iteration at ``now``; returns its duration (s), or ``None`` when idle."""
        cur = self.account_idle(now) if now > self.last_s else self.clock
        obs = self.form(now)
        if obs is None:
            self.busy = False
            self.last_s = now
            return None
        noise = self.noise  # a callable attribute: through a local, the call is a plain call (not a method lookup)
        f = noise()  # drawn before the decision: the oracle's truth includes it (one draw either way)
        if self._reads_truth:
            obs.truth_s = lambda c: (self.cost(c) if c == cur else self._blend(cur, c))[0] * f
        new = self.controller.decide(obs)
        dt, de = self.cost(new) if new == cur else self._switch(now, cur, new)
        dt *= f
        de *= f
        rec = self.record
        rec.busy_energy_j += de
        rec.busy_s += dt
        rec.iterations += 1
        cb = rec.clock_busy_s
        cb[new] = cb.get(new, 0.0) + dt
        self.busy = True
        batch = obs.batch_size
        # One store each (a four-way tuple assignment would build a tuple).
        self.last_latency_s = dt
        self.last_clock = new
        self.last_batch = batch
        self.last_tokens = obs.num_tokens
        self.durations.append(dt)
        self.batches.append(batch)
        if self.record_timeline:
            rec.trace.append((now, batch, obs.num_tokens, new))
        return dt

    def _switch(self, now: float, cur: int, new: int) -> tuple[float, float]:
        """Switch from ``cur`` to ``new`` at the start of the formed iteration: it runs at ``cur`` until the
        switch lands (or throughout, if it ends first). Returns its latency and energy before noise."""
        rec = self.record
        rec.clock_switches += 1
        dt, de = self._blend(cur, new)
        if self.record_timeline:
            rec.timeline.append((now + min(self.switch_s, self.cost(cur)[0]), new))
        self.clock = self._view.clock_mhz = new
        return dt, de

    def _blend(self, cur: int, new: int) -> tuple[float, float]:
        """Latency and energy of the formed iteration when the clock moves from ``cur`` to ``new`` at its start."""
        dt, de = self.cost(new)
        dt_old, de_old = self.cost(cur)
        x = self.switch_s if self.switch_s < dt_old else dt_old
        frac = x / dt_old
        return x + (1.0 - frac) * dt, de_old * frac + de * (1.0 - frac)

    def hold(self, now: float, clock: int) -> None:
        """An outside clock change at ``now`` (a live GPU's setter): while idle it lands at once, the idle time
        so far charged at the old clock; while busy the next iteration switches (``start`` does it)."""
        if self.busy or clock == self.clock:
            return
        self.account_idle(now)
        self.last_s = max(self.last_s, now)
        self.record.clock_switches += 1
        if self.record_timeline:
            self.record.timeline.append((now, clock))
        self.clock = self._view.clock_mhz = clock

    def end_idle(self, now: float) -> None:
        """Close the run at ``now``: charge the idle time since the last iteration."""
        self.account_idle(now)
        self.last_s = now


_PER_ROLE = ("start", "_switch", "account_idle", "rate_at")  # the shared methods on the per-iteration path


def _copy_function(f: Callable[..., Any]) -> Callable[..., Any]:
    """A new function with the same behaviour as ``f`` and its own code object (so its own inline caches)."""
    if not isinstance(f, FunctionType):
        raise TypeError(f"{f!r} is not a plain function")
    g = FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    g.__doc__, g.__qualname__, g.__kwdefaults__ = f.__doc__, f.__qualname__, f.__kwdefaults__
    g.__annotations__ = f.__annotations__
    return g


class PrefillInstance(Instance):
    """A prefill instance: requests queue; each iteration takes chunks from the head of the queue up to the
    chunked-prefill budget (a request longer than what is left of the budget is split across iterations).

    Overlap scheduling, on by default in SGLang's P/D prefill loop (``event_loop_overlap_disagg_prefill``):
    the next batch is formed while the current one runs, from the requests queued when the current one
    started. So a request that arrives during a busy iteration waits for the next one as well, unless nothing
    else was queued then (``docs/notes/sglang-pd-scheduler.md``). ``overlap=False`` forms each batch when the
    previous one ends.
    """

    __slots__ = ("overlap", "_visible", "queue", "queued_tokens", "recent_ttft_s", "_chunks", "_tokens", "_seqs",
                 "_pairs")

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
        object per instance, kept current as the instance changes: a router reads it during its call only)."""
        return self._view

    def submit(self, rid: int, now: float) -> None:
        """A request arrives at this instance."""
        n = self.requests.input_tokens[rid]
        self.queue.append([rid, n, 0])
        self.queued_tokens += n
        v = self._view
        v.num_requests += 1
        v.queued_tokens += n
        self.rate = self.rate * exp((self.rate_t - now) / RATE_TAU_S) + _RATE_STEP
        self.rate_t = now

    def has_work(self) -> bool:
        return bool(self.queue)

    def abort(self, rid: int) -> bool:
        """Drop request ``rid`` from the queue (its client went away) if no chunk of it has run or is running;
        returns whether it was dropped (a request already in prefill finishes it)."""
        running = len(self._chunks) if self.busy else 0
        for i, item in enumerate(self.queue):
            if item[0] != rid:
                continue
            if i < running or item[2] > 0:
                return False
            del self.queue[i]
            self.queued_tokens -= item[1]
            if i < self._visible:
                self._visible -= 1
            v = self._view
            v.num_requests -= 1
            v.queued_tokens -= item[1]
            return True
        return False

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
        for item in islice(q, limit):
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
        # The work behind this batch: the rest of a request it only chunks, then every later request.
        behind = nseq - 1 if q[nseq - 1][1] > chunks[-1] else nseq
        arrival = self.requests.arrival_s
        return Observation(now, nseq, tokens, len(q) - nseq, now - arrival[q[0][0]],
                           self.rate_at(now), self.last_latency_s, self.last_clock, self.last_batch, self.last_tokens,
                           self.recent_ttft_s,
                           self.queued_tokens - tokens, now - arrival[q[behind][0]] if behind < len(q) else 0.0)

    def cost(self, clock: int) -> tuple[float, float]:
        tg, eg, ts, es, tp, ep = self.costs.prefill_tables.get(clock) or self.costs.prefill(clock)
        t, n, p = self._tokens, self._seqs, self._pairs
        return tg[t] + n * ts + p * tp, eg[t] + n * es + p * ep

    def finish(self, now: float) -> list[int]:
        """The running iteration ended at ``now``: returns the requests whose prefill completed, in order."""
        q, chunks = self.queue, self._chunks
        # Every chunk but the last took all that was left of its request (the budget ran out at the last).
        done = [q.popleft()[0] for _ in range(len(chunks) - 1)]
        item = q[0]
        c = chunks[-1]
        item[1] -= c
        item[2] += c
        if item[1] == 0:
            q.popleft()
            done.append(item[0])
        self.queued_tokens -= self._tokens
        self._visible -= len(done)
        v = self._view
        v.num_requests, v.queued_tokens = len(q), self.queued_tokens
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
    iteration boundary waiting requests are admitted in order while the batch is below ``max_batch`` (their
    KV is there already: no memory check, as ``get_new_prebuilt_batch``). Admission delivers the request's
    first token (its prefill computed it); every later token ends an iteration and adds one token of KV.

    Nothing reserves room for outputs: when the free KV no longer holds one more token per running request,
    the instance retracts running requests (``ScheduleBatch.retract_decode``: fewest generated tokens first,
    then the longest prompt) until it holds ``retract_decode_steps`` more per request. A retracted request's
    KV leaves the GPU and its stream stalls. SGLang copies that KV to host memory before the step, and back
    when the request resumes, synchronously: both copies lengthen the iteration they happen in
    (``kv_host_copy_s``: the bytes over the GPU's host link, the GPU idle meanwhile). While any request is
    retracted nothing new is pre-allocated. At each iteration boundary the oldest retracted request resumes
    when its KV fits beside the margin of the active ones, and gets its next token from that iteration
    (``resume_retracted_reqs``). So an overloaded decode trades inter-token latency for
    admission, as SGLang's does, instead of holding new requests back. ``docs/notes/sglang-pd-scheduler.md``
    §1-2 has the source.
    """

    __slots__ = ("capacity", "max_batch", "margin", "on_first_tokens", "on_preallocated", "prealloc", "allocated",
                 "allocated_tokens", "waiting", "inflight", "_ends", "batch", "kv_tokens", "iteration", "_dropped",
                 "retract_steps", "retracted", "copied")

    def __init__(self, index: int, controller: FrequencyController, costs: CostCache, requests: Requests,
                 outcomes: Outcomes, noise: Callable[[], float], switch_s: float, start_s: float,
                 record_timeline: bool = False, on_first_tokens: Callable[[list[int], float], None] | None = None,
                 on_preallocated: Callable[[list[int], float], None] | None = None):
        super().__init__("decode", index, controller, costs, requests, outcomes, noise, switch_s, start_s,
                         record_timeline)
        engine = costs.model.engine
        self.capacity = costs.model.kv_capacity_tokens
        cap = engine.decode_max_running_requests
        self.max_batch = costs.model.max_batch if cap is None else min(cap, costs.model.max_batch)
        self.margin = engine.decode_reserved_tokens
        self.retract_steps = engine.retract_decode_steps
        self.on_first_tokens = on_first_tokens  # told (request ids, now) of the first tokens a pass delivered
        self.on_preallocated = on_preallocated  # told (request ids, now) of the requests a pass pre-allocated
        self.prealloc: deque[int] = deque()  # routed here, KV not yet allocated: their prefill may not start
        self.allocated = 0  # requests with KV allocated that are not running yet (in prefill, transfer, waiting)
        self.allocated_tokens = 0  # their input tokens
        self.waiting: deque[int] = deque()
        self.inflight = 0  # routed here, KV cache not arrived yet (pre-allocating, in prefill or in transit)
        self._ends: dict[int, list[int]] = {}  # iteration index -> the running requests it delivers the last token of
        self.batch = 0
        self.kv_tokens = 0
        self.iteration = 0
        self._dropped: set[int] = set()  # aborted while their KV was in flight (``abort``)
        # Retracted running requests, oldest first: (request id, tokens it had got, the iteration it left at).
        self.retracted: deque[tuple[int, int, int]] = deque()
        self.copied = 0  # KV tokens the formed iteration copies to or from host memory first (retract, resume)

    def view(self) -> InstanceView:
        """What a router may know of this instance now: requests running, waiting and in flight to it, their
        input + output tokens, and the clock. One view object per instance, kept current as the
        instance changes (a router reads it during its call only)."""
        return self._view

    def route(self, rid: int, enqueue: bool = True) -> None:
        """Request ``rid`` was routed here: the instance counts it from now on. With ``enqueue`` it also waits
        for its KV to be pre-allocated at once (the router posted it here); without, ``enqueue`` comes later
        (a router that posts it only once its prefill has answered)."""
        self.inflight += 1
        if enqueue:
            self.prealloc.append(rid)
        v = self._view
        v.num_requests += 1
        v.kv_tokens += self.requests.input_tokens[rid]  # its prompt's KV is coming

    def enqueue(self, rid: int) -> None:
        """Routed request ``rid`` reaches this instance now: it waits for its KV to be pre-allocated."""
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
        released: list[int] = []
        n_tokens = 0
        while q:
            n = inp[q[0]]
            if active and free - m * active < n + m:
                break
            released.append(q.popleft())
            n_tokens += n
            free -= n
            active += 1
        self.allocated += len(released)
        self.allocated_tokens += n_tokens
        self._view.gated = len(q)  # what this pass could not allocate: held back by a full cache
        # Released after the pass's bookkeeping, in queue order.
        if released and self.on_preallocated is not None:
            self.on_preallocated(released, now)

    def submit(self, rid: int, now: float) -> None:
        """A routed request's KV cache arrived: it waits for admission."""
        r = self.requests
        self.inflight -= 1
        if self._dropped and rid in self._dropped:  # aborted on the way: free its allocation
            self._dropped.discard(rid)
            v = self._view
            self.allocated -= 1
            self.allocated_tokens -= r.input_tokens[rid]
            v.num_requests -= 1
            v.kv_tokens -= r.input_tokens[rid]
            return
        self.waiting.append(rid)
        need = r.input_tokens[rid] + r.output_tokens[rid]
        self._view.queued_tokens += need  # it was counted in the view's requests since it was routed
        self.rate = self.rate * exp((self.rate_t - now) / RATE_TAU_S) + _RATE_STEP
        self.rate_t = now

    def has_work(self) -> bool:
        return self.batch > 0 or bool(self.waiting) or bool(self.prealloc) or bool(self.retracted)

    def abort(self, rid: int) -> bool:
        """Drop request ``rid`` wherever it is (its client went away) and free what it holds: its place in the
        pre-allocation queue, its allocated KV, its running slot and KV, or its place among the retracted
        (whose KV is off the GPU already). Call it between iterations
        (a live engine does); a request whose KV is still in flight is dropped when it lands (``submit``).
        Returns whether the request was here."""
        r, v = self.requests, self._view
        n_in, need = r.input_tokens[rid], r.input_tokens[rid] + r.output_tokens[rid]
        if rid in self.prealloc:
            self.prealloc.remove(rid)
            self.inflight -= 1
            v.num_requests -= 1
            v.kv_tokens -= n_in
            return True
        if rid in self.waiting:
            self.waiting.remove(rid)
            self.allocated -= 1
            self.allocated_tokens -= n_in
            v.num_requests -= 1
            v.queued_tokens -= need
            v.kv_tokens -= n_in
            return True
        for i, (held_rid, _, _) in enumerate(self.retracted):
            if held_rid == rid:
                del self.retracted[i]
                v.num_requests -= 1
                v.queued_tokens -= need
                return True
        first = self.outcomes.first_iter[rid]
        if first >= 0 and math.isnan(self.outcomes.finish_s[rid]):  # running
            # The iteration that would give its last token: its first one's plus its output, plus its pauses.
            last = first + r.output_tokens[rid] - 2 + sum(b - a for p, a, b in self.outcomes.pauses if p == rid)
            ends = self._ends.get(last)
            if ends is None or rid not in ends:
                return False
            ends.remove(rid)
            if not ends:
                del self._ends[last]
            held = n_in + r.output_tokens[rid] - (last - self.iteration + 1) - 1  # its prompt and the tokens it got
            self.batch -= 1
            self.kv_tokens -= held
            v.num_requests -= 1
            v.queued_tokens -= need
            v.kv_tokens -= held
            return True
        self._dropped.add(rid)  # allocated, its KV still on the way: dropped when it lands
        return True

    def _admit(self, now: float) -> None:
        w = self.waiting
        r, o = self.requests, self.outcomes
        inp, out = r.input_tokens, r.output_tokens
        first_token, first_iter = o.first_token_s, o.first_iter
        it = self.iteration
        ends = self._ends
        batch, kv = self.batch, self.kv_tokens
        max_batch = self.max_batch
        admitted: list[int] = []
        inp_total = 0
        while w and batch < max_batch:
            rid = w.popleft()
            n_in, n_out = inp[rid], out[rid]
            admitted.append(rid)
            inp_total += n_in
            first_token[rid] = now
            if n_out <= 1:  # its only token was the first: it leaves at once
                o.finish_s[rid] = now
                v = self._view
                v.num_requests -= 1
                v.queued_tokens -= n_in + n_out
                v.kv_tokens -= n_in
                continue
            first_iter[rid] = it
            batch += 1
            kv += n_in
            last = it + n_out - 2  # the iteration that delivers its last token
            if last in ends:
                ends[last].append(rid)
            else:
                ends[last] = [rid]
        self.batch, self.kv_tokens = batch, kv
        self.allocated -= len(admitted)
        self.allocated_tokens -= inp_total
        # First tokens are announced after the pass's bookkeeping, in admission order.
        if admitted and self.on_first_tokens is not None:
            self.on_first_tokens(admitted, now)

    def _retract(self) -> None:
        """Retract running requests until the free KV holds ``retract_steps`` more tokens per request left running:
        fewest tokens got first, then the longest prompt (at least one goes, and one always stays)."""
        it, v, ends = self.iteration, self._view, self._ends
        inp, out = self.requests.input_tokens, self.requests.output_tokens
        # (tokens got, -prompt, -id, the iteration of its last token) per running request, the one retracted
        # first last (on a tie the newest, as SGLang's stable sort of its batch leaves it).
        running = sorted(((out[rid] - (last - it + 1), -inp[rid], -rid, last) for last, rids in ends.items()
                          for rid in rids), reverse=True)
        while len(running) > 1:
            got, _, neg_rid, last = running.pop()
            rid = -neg_rid
            rids = ends[last]
            rids.remove(rid)
            if not rids:
                del ends[last]
            held = inp[rid] + got - 1  # its prompt and the tokens it got, but the last one's KV is not written
            self.batch -= 1
            self.kv_tokens -= held
            v.kv_tokens -= held
            self.copied += held
            self.retracted.append((rid, got, it))
            if self.capacity - self.kv_tokens - self.allocated_tokens >= self.retract_steps * self.batch:
                break

    def _resume(self) -> None:
        """Bring retracted requests back, oldest first, while each one's KV fits beside the margin of the active
        requests (one always comes back onto an empty batch); each gets its next token from this iteration."""
        it, v, ends, q, m = self.iteration, self._view, self._ends, self.retracted, self.margin
        inp, out = self.requests.input_tokens, self.requests.output_tokens
        pauses = self.outcomes.pauses
        while q:
            rid, got, left_at = q[0]
            held = inp[rid] + got - 1
            free = self.capacity - self.kv_tokens - self.allocated_tokens - m * (self.batch + self.allocated)
            if self.batch and held + 1 + m > free:
                break
            q.popleft()
            self.batch += 1
            self.kv_tokens += held
            v.kv_tokens += held
            self.copied += held
            last = it + out[rid] - got - 1  # this iteration gives it token got + 1
            if last in ends:
                ends[last].append(rid)
            else:
                ends[last] = [rid]
            pauses.append((rid, left_at, it))

    def form(self, now: float) -> Observation | None:
        self.copied = 0
        if self.retracted:
            self._resume()
        # Requests whose prefill waits for this instance's KV (decode-gated): their wait is TTFT that only a
        # faster decode (freeing KV sooner) gives back.
        gated = self.prealloc
        if gated:
            if self.retracted:  # nothing new is pre-allocated while a retracted request waits
                self._view.gated = len(gated)
            else:
                self.preallocate(now)
        if self.waiting:
            self._admit(now)
        while not self.batch and gated and not self.retracted:
            # Everything admitted left at once (a one-token output): its KV is free for the next in line.
            n = len(gated)
            self.preallocate(now)
            if self.waiting:
                self._admit(now)
            if len(gated) == n:
                break
        if self.capacity - self.kv_tokens - self.allocated_tokens < self.batch:  # no room for the next tokens
            self._retract()
        batch = self.batch
        if batch == 0:
            return None
        return Observation(now, batch, self.kv_tokens, len(self.waiting), 0.0, self.rate_at(now),
                           self.last_latency_s, self.last_clock, self.last_batch, self.last_tokens, 0.0,
                           len(gated), now - self.requests.arrival_s[gated[0]] if gated else 0.0)

    def cost(self, clock: int) -> tuple[float, float]:
        costs = self.costs
        t0, e0, tk, ek = costs.decode_tables.get(clock) or costs.decode(clock)
        b, k = self.batch, self.kv_tokens
        if self.copied:  # the step waits for the KV copies of this pass's retractions and resumptions
            dt = self.copied * costs.host_copy_s_per_token
            return t0[b] + k * tk + dt, e0[b] + k * ek + dt * costs.idle_w(clock)
        return t0[b] + k * tk, e0[b] + k * ek

    def finish(self, now: float) -> None:
        """The running iteration ended at ``now``: every running request got a token; some completed."""
        it = self.iteration
        self.kv_tokens += self.batch
        self._view.kv_tokens += self.batch
        done = self._ends.pop(it, None)
        if done is not None:
            r, fin = self.requests, self.outcomes.finish_s
            inp, out = r.input_tokens, r.output_tokens
            tokens = 0
            for rid in done:
                fin[rid] = now
                tokens += inp[rid] + out[rid]
            # Each frees its KV (its input and all but its last token) and leaves the view's input + output tokens.
            self.batch -= len(done)
            self.kv_tokens -= tokens - len(done)
            v = self._view
            v.num_requests -= len(done)
            v.queued_tokens -= tokens
            v.kv_tokens -= tokens - len(done)
        self.iteration = it + 1
        self.busy = False
        self.last_s = now


class ColocatedInstance(Instance):
    """One instance that serves both phases (no P/D split): chunked prefill mixed into the decode batch.

    As SGLang's scheduler with ``--enable-mixed-chunk``: requests queue on arrival; at each iteration
    boundary the head of the queue is admitted while its input + output tokens fit the KV capacity beside
    the requests already admitted and the running batch stays below ``max_batch`` (one is always admitted
    onto an idle instance); the admitted requests' prompts are then prefilled in chunks, head first, within
    the chunked-prefill budget less the running batch (the decode tokens ride in the same forward pass).
    A request whose last chunk ran gets its first token when that iteration ends and joins the decode batch
    from the next one. The input + output reservation is close to SGLang's own for the paper's workload:
    with ``ignore_eos`` requests and the radix cache off, ``PrefillAdder.add_one_req_ignore_eos`` admits a
    request only while every running one can still reach its last token, counting the KV that earlier
    finishers free (the sum here counts none of it, a little more conservative). With the radix cache on
    (stock), SGLang reserves a decaying share of the outputs instead (``new_token_ratio``) and, when the pool
    fills, retracts running requests to recompute them later; that path is not modelled. The iteration's
    cost is the ground truth's mixed cost (``mixed_cost``): the combined tokens through the projections,
    every sequence's overhead, the chunks' attention and the batch's KV reads.
    """

    __slots__ = ("capacity", "max_batch", "waiting", "prefilling", "reserved", "recent_ttft_s",
                 "_ends", "batch", "kv_tokens", "iteration", "_chunks", "_tokens", "_pairs")

    def __init__(self, index: int, controller: FrequencyController, costs: CostCache, requests: Requests,
                 outcomes: Outcomes, noise: Callable[[], float], switch_s: float, start_s: float,
                 record_timeline: bool = False):
        super().__init__("colocated", index, controller, costs, requests, outcomes, noise, switch_s, start_s,
                         record_timeline)
        self.capacity = costs.model.kv_capacity_tokens
        self.max_batch = costs.model.max_batch
        self.waiting: deque[int] = deque()  # arrived, KV not reserved yet
        self.prefilling: deque[list[int]] = deque()  # admitted: [request id, tokens left, tokens done]
        self.reserved = 0  # input + output tokens of the admitted and running requests
        self.recent_ttft_s = 0.0
        self._ends: dict[int, list[int]] = {}
        self.batch = 0
        self.kv_tokens = 0
        self.iteration = 0
        self._chunks: list[int] = []
        self._tokens = 0
        self._pairs = 0.0

    def view(self) -> InstanceView:
        """Requests on the instance (queued, prefilling, running), their input + output tokens, the clock."""
        return self._view

    def submit(self, rid: int, now: float) -> None:
        """A request arrives at this instance."""
        r = self.requests
        self.waiting.append(rid)
        v = self._view
        v.num_requests += 1
        v.queued_tokens += r.input_tokens[rid] + r.output_tokens[rid]
        self.rate = self.rate * exp((self.rate_t - now) / RATE_TAU_S) + _RATE_STEP
        self.rate_t = now

    def has_work(self) -> bool:
        return self.batch > 0 or bool(self.prefilling) or bool(self.waiting)

    def _admit(self) -> None:
        w, r = self.waiting, self.requests
        while w:
            need = r.input_tokens[w[0]] + r.output_tokens[w[0]]
            busy = self.batch + len(self.prefilling)
            if busy and (self.reserved + need > self.capacity or busy >= self.max_batch):
                break
            rid = w.popleft()
            self.reserved += need
            self.prefilling.append([rid, r.input_tokens[rid], 0])

    def form(self, now: float) -> Observation | None:
        if self.waiting:
            self._admit()
        left = self.costs.budget - self.batch
        chunks = self._chunks
        chunks.clear()
        tokens, pairs = 0, 0.0
        for item in self.prefilling:
            if left <= 0:
                break
            c = item[1] if item[1] < left else left
            pairs += c * (item[2] + (c + 1) * 0.5)
            chunks.append(c)
            tokens += c
            left -= c
        self._tokens, self._pairs = tokens, pairs
        if not chunks and self.batch == 0:
            return None
        arrival = self.requests.arrival_s
        q = self.prefilling
        oldest = now - arrival[q[0][0]] if q else 0.0
        # As a decode instance sees it (batch: the requests that get a token from the iteration; tokens: their
        # KV), with the prefill side as its queue: the prompt tokens left behind this iteration's chunks.
        return Observation(now, self.batch, self.kv_tokens, len(self.waiting), oldest,
                           self.rate_at(now), self.last_latency_s, self.last_clock, self.last_batch, self.last_tokens,
                           self.recent_ttft_s, sum(item[1] for item in q) - tokens,
                           now - arrival[self.waiting[0]] if self.waiting else 0.0)

    def cost(self, clock: int) -> tuple[float, float]:
        t0, e0, tk, ek = self.costs.decode_tables.get(clock) or self.costs.decode(clock)
        b, k, n = self.batch, self.kv_tokens, self._tokens
        if n == 0:
            return t0[b] + k * tk, e0[b] + k * ek
        tg, eg, ts, es, tp, ep = self.costs.prefill_tables.get(clock) or self.costs.prefill(clock)
        tokens, seqs, p = n + b, len(self._chunks) + b, self._pairs
        return tg[tokens] + seqs * ts + p * tp + k * tk, eg[tokens] + seqs * es + p * ep + k * ek

    def finish(self, now: float) -> None:
        """The running iteration ended at ``now``: the batch got a token each, chunks ran, some requests
        completed their prefill (first token) or their decode (last token)."""
        it = self.iteration
        r, o = self.requests, self.outcomes
        inp, out = r.input_tokens, r.output_tokens
        v = self._view
        self.kv_tokens += self.batch
        done = self._ends.pop(it, None)
        if done is not None:
            tokens = 0
            for rid in done:
                o.finish_s[rid] = now
                tokens += inp[rid] + out[rid]
            self.batch -= len(done)
            self.kv_tokens -= tokens - len(done)
            self.reserved -= tokens
            v.num_requests -= len(done)
            v.queued_tokens -= tokens
        q = self.prefilling
        first: list[int] = []
        for c in self._chunks:
            item = q[0]
            item[1] -= c
            item[2] += c
            if item[1] > 0:
                break
            q.popleft()
            rid = item[0]
            first.append(rid)
            o.first_token_s[rid] = now
            n_out = out[rid]
            if n_out <= 1:  # its only token was the first: it leaves at once
                o.finish_s[rid] = now
                need = inp[rid] + n_out
                self.reserved -= need
                v.num_requests -= 1
                v.queued_tokens -= need
                continue
            o.first_iter[rid] = it + 1
            self.batch += 1
            self.kv_tokens += inp[rid]
            last = it + n_out - 1  # its n_out - 1 later tokens end iterations it + 1 ... it + n_out - 1
            if last in self._ends:
                self._ends[last].append(rid)
            else:
                self._ends[last] = [rid]
        v.kv_tokens = self.kv_tokens
        self.iteration = it + 1
        self.busy = False
        self.last_s = now
        if first:
            self.recent_ttft_s = now - r.arrival_s[first[-1]]
