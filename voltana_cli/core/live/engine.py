"""The emulated engine: one process per instance that speaks SGLang's HTTP API and plays its P/D role, with
the simulator's own scheduler driven by wall time.

An ``EmulatedEngine`` owns one ``PrefillInstance`` or ``DecodeInstance`` (``core.sim.instance``: the same
class, chunked-prefill budget, KV pre-allocation and capacity, continuous batching, clock-switch cost and
energy accounting the simulator runs) and drives it from ``time.monotonic``: form an iteration, sleep its
modelled duration at the held clock, apply it. So an emulated cluster queues, batches and gates exactly as
a simulated one; only the event clock differs.

The P/D protocol, as SGLang's servers play it (``../shared/SGLANG.md``): the router posts the same body,
with ``bootstrap_host``/``bootstrap_port``/``bootstrap_room``, to a prefill and a decode instance at once.

- The decode instance queues the request for KV pre-allocation; once allocated it tells the prefill's
  bootstrap server (``POST /_voltana/allocated``), which releases the prefill. The notice lands the engine
  spec's ``bootstrap_latency_ms`` after the allocation (its own trip included), as in the simulator.
- The prefill instance prefills it and, after the modelled KV-transfer time, hands the KV cache over
  (``POST {decode}/_voltana/kv``), then answers the router (which discards the answer).
- The decode instance admits it (the first token), then every iteration gives it one more token, streamed
  to the client as SSE or returned whole.

Without a bootstrap room a request is refused (400), as a P/D instance of SGLang refuses it.

What cannot be emulated is said here, not hidden: there are no weights, so the text is one placeholder
word per token and every request runs to its token limit (``ignore_eos`` in effect); a text prompt's token
count is estimated at 4 UTF-8 bytes per token (send ``input_ids`` or a token-id ``prompt`` for exact
counts); a chat request adds 4 tokens per message for the template.

The clock is what the GPU access layer sets: ``POST /_voltana/clock`` (the emulated GPU's setter, used by a
sidecar or by the router's admin API); the engine runs every iteration at the clock held when it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.live import trace
from voltana_cli.core.models import InstanceModel, PerfModel, engine_spec, gpu_spec, model_spec
from voltana_cli.core.policy import StaticController
from voltana_cli.core.sim import CostCache, DecodeInstance, Outcomes, PrefillInstance, Requests

#: Bytes of UTF-8 text per token when a prompt comes as text (English BPE tokenisers average about 4).
BYTES_PER_TOKEN = 4
#: Template tokens a chat request adds per message.
CHAT_TOKENS_PER_MESSAGE = 4
#: The placeholder text of every emulated output token.
TOKEN_TEXT = " tok"
#: Default output tokens when a request names none (SGLang's max_new_tokens default; OpenAI's completions: 16).
DEFAULT_MAX_TOKENS = {"generate": 128, "completions": 16, "chat": 128}
#: Largest request body accepted (bytes).
MAX_BODY_BYTES = 32 * 1024 * 1024
#: How far (s) the scheduler loop may fall behind its model's iteration ends and still catch up.
MAX_LAG_S = 0.05
#: Smoothing of a P/D message's trip estimate (KV hand-over, allocation notice), and the share of its round
#: trip that comes before the peer reads it (half: loopback hops are symmetric).
TRIP_EWMA = 0.2
TRIP_ONE_WAY = 0.5
#: Allocation notices a prefill keeps for requests it has not seen (a notice can beat its request, or come
#: after it was aborted); past this many the oldest is dropped.
MAX_EARLY_NOTICES = 4096
#: Smoothing of the event loop's measured timer lateness.
LATE_EWMA = 0.1


class BadRequest(Exception):
    """A request body the engine refuses (HTTP 400, OpenAI-style error JSON)."""


@dataclass
class Job:
    """One request on this instance."""

    rid: int
    room: int
    input_tokens: int
    output_tokens: int
    tokens: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)  # decode: tokens delivered
    done: asyncio.Event = field(default_factory=asyncio.Event)  # prefill: its KV was handed over
    peer_url: str | None = None  # prefill: its decode instance; decode: its prefill's bootstrap server
    queued: bool = False  # prefill: submitted to the scheduler


@dataclass
class ParsedRequest:
    """What the engine needs from a request body, whatever the endpoint."""

    kind: str  # generate | completions | chat
    input_tokens: int
    output_tokens: int
    stream: bool
    room: int | None
    bootstrap_host: str | None
    bootstrap_port: int | None
    model: str
    include_usage: bool


def _int_field(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadRequest(f"'{name}' must be an integer, not {type(v).__name__}")
        return v
    return None


def _text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN))


def parse_request(kind: str, body: object, max_context: int) -> ParsedRequest:
    """Validate a request body of endpoint ``kind``; ``BadRequest`` names the first problem."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if kind == "generate":
        ids, text = body.get("input_ids"), body.get("text")
        if ids is not None:
            if not isinstance(ids, list) or not ids or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in ids):
                raise BadRequest("'input_ids' must be a non-empty list of integers")
            n_in = len(ids)
        elif isinstance(text, str) and text:
            n_in = _text_tokens(text)
        else:
            raise BadRequest("give 'text' (a non-empty string) or 'input_ids' (a list of token ids)")
        sp = body.get("sampling_params") or {}
        if not isinstance(sp, dict):
            raise BadRequest("'sampling_params' must be an object")
        n_out = _int_field(sp, "max_new_tokens")
    elif kind == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, str) and prompt:
            n_in = _text_tokens(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(x, int) and not isinstance(x, bool) for x in prompt):
            n_in = len(prompt)
        else:
            raise BadRequest("'prompt' must be a non-empty string or a non-empty list of token ids")
        n_out = _int_field(body, "max_tokens")
    else:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("'messages' must be a non-empty list")
        n_in = 0
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest("each message must be an object with a 'role' and a 'content'")
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
            if not isinstance(c, str):
                raise BadRequest("a message's 'content' must be a string or a list of text parts")
            n_in += (_text_tokens(c) if c else 0) + CHAT_TOKENS_PER_MESSAGE
        n_out = _int_field(body, "max_completion_tokens", "max_tokens")
    if n_out is None:
        n_out = DEFAULT_MAX_TOKENS[kind]
    if n_out < 1:
        raise BadRequest(f"the output token limit must be >= 1, got {n_out}")
    if n_in + n_out > max_context:
        raise BadRequest(f"{n_in} prompt tokens + {n_out} output tokens exceed the model's context of {max_context}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    room = _int_field(body, "bootstrap_room")
    port = _int_field(body, "bootstrap_port")
    host = body.get("bootstrap_host")
    if host is not None and not isinstance(host, str):
        raise BadRequest("'bootstrap_host' must be a string")
    opts = body.get("stream_options") or {}
    model = body.get("model", "")
    return ParsedRequest(kind, n_in, n_out, stream, room, host, port, model if isinstance(model, str) else "",
                         bool(isinstance(opts, dict) and opts.get("include_usage")))


class EmulatedEngine:
    """One emulated SGLang instance (see the module docstring).

    Args:
        role: ``prefill`` or ``decode``.
        model: the ground truth (iteration time and energy at a clock).
        model_name: what ``/v1/models`` and responses call the model.
        url: this instance's own URL (a decode tells prefills where to send KV).
        clock_mhz: the clock it starts at (unlocked GPUs boost: the top clock).
        post: ``post(url, json)`` for the engine-to-engine messages of the P/D protocol.
        now: the wall clock (seconds).
    """

    def __init__(self, role: str, model: InstanceModel, model_name: str, url: str, clock_mhz: int,
                 post: Callable[[str, dict[str, Any]], Any], now: Callable[[], float] = time.monotonic):
        if role not in ("prefill", "decode"):
            raise UserError(f"unknown role {role!r}: use prefill or decode", field="role")
        self.role, self.model, self.model_name, self.url = role, model, model_name, url
        self._clock = now
        self._t0 = now()
        self._post = post
        # The clock the GPU access layer last set: a static controller whose clock the setter moves (the
        # engine never changes clocks itself; the sidecar does, through ``set_clock``).
        self.controller = StaticController(model.check_clock(clock_mhz))
        self.requests = Requests()
        self.outcomes = Outcomes()
        costs = CostCache(model, model.engine.chunked_prefill_tokens)
        common = (self.controller, costs, self.requests, self.outcomes, lambda: 1.0,
                  model.gpu.clock_switch_ms / 1e3, 0.0)
        self.inst: PrefillInstance | DecodeInstance
        if role == "prefill":
            self.inst = PrefillInstance(0, *common, overlap=model.engine.prefill_overlap_schedule)
        else:
            self.inst = DecodeInstance(0, *common, on_first_tokens=self._first_tokens,
                                       on_preallocated=self._preallocated)
        self.jobs: dict[int, Job] = {}  # by request id
        self.rooms: dict[int, Job] = {}  # by bootstrap room
        self._early: dict[int, str] = {}  # prefill: allocation notices that came before their request
        self._running: dict[int, int] = {}  # decode: request id -> tokens still to deliver
        self._aborts: list[int] = []  # requests whose client went away, to drop between iterations
        self._trip_s: dict[str, float] = {}  # estimated one-way trip of a P/D message, by kind (``_send_at``)
        self._late_s = 0.0  # how late a timer of this loop fires, smoothed (``_sleep_until``)
        self._aborted_in_flight: dict[int, int] = {}  # decode: room -> request aborted before its KV landed
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.publish: Callable[[dict[str, Any]], None] | None = None  # per-iteration state (``ForwardPassStream``)
        self.started_requests = 0
        self.finished_requests = 0

    # ---- time and state ------------------------------------------------------------------------------
    def now(self) -> float:
        return self._clock() - self._t0

    def set_clock(self, clock_mhz: int) -> int:
        """The emulated GPU's clock setter: from the next iteration on, the engine runs at ``clock_mhz``."""
        self.controller.clock_mhz = self.controller.idle_clock_mhz = self.model.check_clock(clock_mhz)
        self.inst.hold(self.now(), clock_mhz)  # an idle GPU takes it at once
        return clock_mhz

    def energy(self) -> dict[str, float]:
        """Joules since start: busy (iterations) and idle (between them, up to now)."""
        rec, inst = self.inst.record, self.inst
        idle = rec.idle_energy_j
        if not inst.busy:
            idle += inst.costs.idle_w(inst.clock) * max(0.0, self.now() - inst.last_s)
        return {"total_j": rec.busy_energy_j + idle, "busy_j": rec.busy_energy_j, "idle_j": idle}

    def state(self) -> dict[str, Any]:
        """What a sidecar or the router reads of this instance."""
        inst = self.inst
        out: dict[str, Any] = {"role": self.role, "clock_mhz": inst.clock, "held_clock_mhz": self.controller.clock_mhz,
                               "iterations": inst.record.iterations, "busy_s": inst.record.busy_s,
                               "clock_switches": inst.record.clock_switches, **self.energy(),
                               "requests": len(self.jobs), "started": self.started_requests,
                               "finished": self.finished_requests, "time_s": self.now()}
        if isinstance(inst, DecodeInstance):
            out.update(running=inst.batch, waiting=len(inst.waiting), preallocating=len(inst.prealloc),
                       retracted=len(inst.retracted), kv_tokens=inst.kv_tokens, kv_capacity_tokens=inst.capacity)
        else:
            out.update(running=0, waiting=len(inst.queue), queued_tokens=inst.queued_tokens)
        return out

    # ---- requests ------------------------------------------------------------------------------------
    def _new_job(self, req: ParsedRequest) -> Job:
        if req.room is None:
            raise BadRequest("this is a P/D instance: a request needs 'bootstrap_room' (send it through the router)")
        if req.room in self.rooms:
            raise BadRequest(f"bootstrap_room {req.room} is already in use on this instance")
        cap = self.model.kv_capacity_tokens
        if req.input_tokens + req.output_tokens > cap:
            raise BadRequest(f"{req.input_tokens + req.output_tokens} tokens exceed the instance's KV capacity of {cap}")
        rid = len(self.requests.arrival_s)
        self.requests.arrival_s.append(self.now())
        self.requests.input_tokens.append(req.input_tokens)
        self.requests.output_tokens.append(req.output_tokens)
        self.outcomes.first_token_s.append(math.nan)
        self.outcomes.finish_s.append(math.nan)
        self.outcomes.first_iter.append(-1)
        job = Job(rid, req.room, req.input_tokens, req.output_tokens)
        self.jobs[rid] = job
        self.rooms[req.room] = job
        self.started_requests += 1
        return job

    def _forget(self, job: Job) -> None:
        self.jobs.pop(job.rid, None)
        self.rooms.pop(job.room, None)
        self.finished_requests += 1

    async def prefill(self, req: ParsedRequest) -> dict[str, Any]:
        """Prefill one request (once its decode instance has allocated KV); answers when its KV is handed over."""
        job = self._new_job(req)
        done = False
        try:
            early = self._early.pop(job.room, None)
            if early is not None:
                self._release(job, early)
            await job.done.wait()
            done = True
        finally:
            self.finish_job(job, complete=done)
        return {"text": "", "meta_info": {"id": str(job.room), "prompt_tokens": job.input_tokens,
                                          "completion_tokens": 0, "finish_reason": None}}

    def allocated(self, room: int, decode_url: str) -> None:
        """The decode instance of ``room`` holds its KV now: the prefill may be scheduled."""
        job = self.rooms.get(room)
        if job is None:
            self._early[room] = decode_url  # the notice beat the request here, or its request was aborted
            if len(self._early) > MAX_EARLY_NOTICES:  # the oldest is an aborted request's: its request never comes
                del self._early[next(iter(self._early))]
            return
        self._release(job, decode_url)

    def _release(self, job: Job, decode_url: str) -> None:
        if job.queued:
            return
        job.peer_url, job.queued = decode_url, True
        trace.event("prefill_released", job.room)
        self.inst.submit(job.rid, self.now())
        self._wake.set()

    def decode(self, req: ParsedRequest) -> Job:
        """Route a request here (the decode side); its tokens arrive on ``job.tokens``."""
        if not req.bootstrap_host or req.bootstrap_port is None:
            raise BadRequest("a decode instance needs 'bootstrap_host' and 'bootstrap_port' (send it through the router)")
        job = self._new_job(req)
        job.peer_url = f"http://{req.bootstrap_host}:{req.bootstrap_port}"  # the prefill's bootstrap server
        trace.event("decode_received", job.room)
        assert isinstance(self.inst, DecodeInstance)
        self.inst.route(job.rid)
        self._wake.set()
        return job

    def kv_arrived(self, room: int) -> bool:
        """The KV cache of ``room`` landed here: it waits for admission (or, aborted on the way, is dropped)."""
        trace.event("decode_kv_arrived", room)
        job = self.rooms.get(room)
        rid = job.rid if job is not None else self._aborted_in_flight.pop(room, None)
        if rid is None:
            return False
        self.inst.submit(rid, self.now())
        self._wake.set()
        return True

    def finish_job(self, job: Job, complete: bool = True) -> None:
        """The answer of ``job`` is over; one that is not ``complete`` (its client went away) is aborted in the
        scheduler, freeing its KV (at once between iterations, else when the running one ends)."""
        self._forget(job)
        if not complete:
            inst = self.inst
            if isinstance(inst, DecodeInstance) and math.isnan(self.outcomes.first_token_s[job.rid]) \
                    and job.rid not in inst.waiting and job.rid not in inst.prealloc:
                self._aborted_in_flight[job.room] = job.rid  # allocated, its KV on the way: ``kv_arrived`` drops it
            self._running.pop(job.rid, None)
            self._aborts.append(job.rid)
            if not self.inst.busy:
                self._apply_aborts()

    def _apply_aborts(self) -> None:
        for rid in self._aborts:
            self.inst.abort(rid)
        self._aborts.clear()
        self._wake.set()  # freed KV may admit or pre-allocate others

    # ---- scheduler callbacks -------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _preallocated(self, rids: list[int], now: float) -> None:
        """The prefill instances of these requests learn that their KV is allocated the engine spec's handshake
        latency after ``now`` (``bootstrap_latency_ms``), as a simulated one does."""
        for rid in rids:
            job = self.jobs.get(rid)
            if job is not None and job.peer_url:
                trace.event("decode_preallocated", job.room)
                self._spawn(self._send_at(now + self.model.engine.bootstrap_latency_ms / 1e3, "allocated",
                                          f"{job.peer_url}/_voltana/allocated", {"room": job.room, "decode_url": self.url}))

    def _first_tokens(self, rids: list[int], now: float) -> None:
        for rid in rids:
            job = self.jobs.get(rid)
            if job is None:
                continue
            trace.event("decode_first_token", job.room)
            job.tokens.put_nowait(1)
            if job.output_tokens > 1:
                self._running[rid] = job.output_tokens - 1
            else:
                job.tokens.put_nowait(None)

    async def _hand_over(self, job: Job, done_s: float) -> None:
        """Hand ``job``'s KV cache over: it lands on its decode instance the modelled transfer time after its
        prefill ended (``done_s``, engine time)."""
        try:
            if job.peer_url:
                await self._send_at(done_s + self.model.kv_transfer_s(job.input_tokens), "kv",
                                    f"{job.peer_url}/_voltana/kv", {"room": job.room})
        finally:
            job.done.set()

    async def _send_at(self, due_s: float, kind: str, url: str, body: dict[str, Any]) -> None:
        """Deliver a P/D message (``kind``) so that it lands at engine time ``due_s``: the message's own trip
        is part of the modelled time, so it is sent that much earlier (the trip estimated from the previous
        ones' round trips of that kind), or at once when that is already past."""
        lead = self._trip_s.get(kind, 0.0)
        if due_s - lead > self.now():
            await self._sleep_until(due_s - lead)
        sent = self.now()
        await self._post(url, body)
        rtt = self.now() - sent
        self._trip_s[kind] = lead + TRIP_EWMA * (TRIP_ONE_WAY * rtt - lead)

    async def _sleep_until(self, t: float) -> None:
        """Sleep until engine time ``t``. An event loop's timer fires late by a fairly steady amount (about
        a millisecond: its timeout is rounded up, then the loop has other callbacks to run); the engine wakes
        that much early, by a running mean of its own lateness, so that its wake-ups centre on the model's
        times instead of trailing them."""
        ask = t - self._late_s
        await asyncio.sleep(max(0.0, ask - self.now()))
        late = self.now() - ask
        if 0.0 <= late < MAX_LAG_S:
            self._late_s += LATE_EWMA * (late - self._late_s)

    def _after(self, result: list[int] | None, end: float) -> list[tuple[Job, bool]]:
        """Apply an iteration's result (ended at ``end``, engine time); a decode returns the jobs that got a
        token from it, for ``_deliver`` (after the next iteration is formed: P/D messages go first)."""
        if result is not None:  # prefill: these completed
            for rid in result:
                job = self.jobs.get(rid)
                if job is not None:
                    self._spawn(self._hand_over(job, end))
            return []
        got: list[tuple[Job, bool]] = []
        done = []
        inst = self.inst
        assert isinstance(inst, DecodeInstance)
        paused = {rid for rid, _, _ in inst.retracted}  # retracted when the iteration formed: no token from it
        for rid, left in self._running.items():
            job = self.jobs.get(rid)
            if job is None:
                done.append(rid)
                continue
            if rid in paused:
                continue
            got.append((job, left <= 1))
            if left <= 1:
                done.append(rid)
            else:
                self._running[rid] = left - 1
        for rid in done:
            del self._running[rid]
        return got

    @staticmethod
    def _deliver(got: list[tuple[Job, bool]]) -> None:
        for job, last in got:
            job.tokens.put_nowait(1)
            if last:
                job.tokens.put_nowait(None)

    async def run(self) -> None:
        """The scheduler loop: iterations back to back while there is work, each as long as the model says."""
        inst = self.inst
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Iterations are scheduled against absolute deadlines in engine time: the next one starts when the
            # previous one ends by the model (``t``), not when this loop got to run again, so the loop's
            # lateness (timer granularity, other tasks) does not add up, iteration after iteration. Past
            # MAX_LAG_S behind (a stalled process) the engine resynchronises with the wall clock instead.
            t = self.now()
            got: list[tuple[Job, bool]] = []
            while True:
                dt = inst.start(t) if inst.has_work() else None
                # The tokens of the iteration that just ended go out after the next one is formed: its P/D
                # messages (pre-allocation notices) and first tokens are queued ahead of the stream writes.
                self._deliver(got)
                if dt is None:
                    break
                end = t + dt
                await self._sleep_until(end)
                got = self._after(inst.finish(end), end)
                if self._aborts:
                    self._apply_aborts()
                if self.publish is not None:
                    self.publish(self.forward_pass(dt))
                now = self.now()
                t = end if now - end <= MAX_LAG_S else now

    def forward_pass(self, wall_s: float) -> dict[str, Any]:
        """The iteration that just ran and the queue now, as SGLang's forward-pass metrics message
        (``../shared/SGLANG.md``): what the sidecar reads of an emulated and a real instance alike."""
        inst = self.inst
        zero = {"num_prefill_requests": 0, "sum_prefill_tokens": 0, "var_prefill_length": 0.0,
                "num_decode_requests": 0, "sum_decode_kv_tokens": 0, "var_decode_kv_tokens": 0.0}
        sched, queued = dict(zero), dict(zero)
        if isinstance(inst, DecodeInstance):
            sched.update(num_decode_requests=inst.last_batch, sum_decode_kv_tokens=inst.last_tokens)
            queued.update(num_decode_requests=len(inst.waiting) + len(inst.prealloc))
        else:
            sched.update(num_prefill_requests=inst.last_batch, sum_prefill_tokens=inst.last_tokens)
            queued.update(num_prefill_requests=len(inst.queue), sum_prefill_tokens=inst.queued_tokens)
        return {"version": 1, "worker_id": self.url, "dp_rank": 0, "counter_id": inst.record.iterations,
                "wall_time": wall_s, "scheduled_requests": sched, "queued_requests": queued}


# ---- HTTP ------------------------------------------------------------------------------------------------
def error_response(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    """An OpenAI-style JSON error (the engine's and the router's)."""
    from aiohttp import web

    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


async def read_json(request: Any) -> Any:
    """The request's JSON body; ``BadRequest`` when it is not JSON."""
    try:
        return await request.json()
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequest("the request body is not valid JSON") from None


def bad_requests() -> Any:
    """aiohttp middleware: a ``BadRequest`` from any handler is a 400 JSON error, not a 500."""
    from aiohttp import web

    @web.middleware
    async def middleware(request: Any, handler: Any) -> Any:
        try:
            return await handler(request)
        except BadRequest as exc:
            return error_response(400, str(exc))

    return middleware


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _token_stream(job: Job) -> AsyncIterator[int]:
    n = 0
    while True:
        tok = await job.tokens.get()
        if tok is None:
            return
        n += 1
        yield n


def _bodies(kind: str, req: ParsedRequest, rid: str, n: int, model: str, final: bool) -> dict[str, Any]:
    """The response (or the last stream chunk's shape) of ``kind`` after ``n`` tokens."""
    usage = {"prompt_tokens": req.input_tokens, "completion_tokens": n, "total_tokens": req.input_tokens + n}
    created = int(time.time())
    reason = "length" if final else None
    if kind == "generate":
        return {"text": TOKEN_TEXT * n, "output_ids": [0] * n,
                "meta_info": {"id": rid, "prompt_tokens": req.input_tokens, "completion_tokens": n,
                              "finish_reason": {"type": "length", "length": n} if final else None}}
    if kind == "completions":
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": TOKEN_TEXT * n, "logprobs": None, "finish_reason": reason}],
                "usage": usage}
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": TOKEN_TEXT * n},
                         "finish_reason": reason}], "usage": usage}


def _chunk(kind: str, req: ParsedRequest, rid: str, n: int, model: str, final: bool) -> dict[str, Any]:
    """One SSE chunk carrying token ``n``."""
    created = int(time.time())
    reason = "length" if final else None
    if kind == "generate":  # SGLang streams the text so far, with running counts
        return _bodies(kind, req, rid, n, model, final)
    if kind == "completions":
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": TOKEN_TEXT, "logprobs": None, "finish_reason": reason}]}
    delta: dict[str, Any] = {"content": TOKEN_TEXT}
    if n == 1:
        delta["role"] = "assistant"
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}


def make_app(engine: EmulatedEngine) -> Any:
    """The instance's HTTP API (aiohttp): status, the P/D and clock messages, inference."""
    from aiohttp import web

    routes = web.RouteTableDef()
    _status_routes(engine, routes)
    _control_routes(engine, routes)
    _inference_routes(engine, routes)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[bad_requests()])
    app.add_routes(routes)
    return app


def _status_routes(engine: EmulatedEngine, routes: Any) -> None:
    """``/health``, ``/health_generate``, server info, ``/v1/models`` and Prometheus ``/metrics``."""
    from aiohttp import web

    @routes.get("/health")
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    @routes.get("/health_generate")
    async def health_generate(request: web.Request) -> web.Response:
        return web.Response(text="")

    @routes.get("/server_info")
    @routes.get("/get_server_info")
    async def server_info(request: web.Request) -> web.Response:
        return web.json_response({"model_path": engine.model_name, "disaggregation_mode": engine.role,
                                  "chunked_prefill_size": engine.model.engine.chunked_prefill_tokens,
                                  "tp_size": engine.model.tp, "emulated": True, "version": "voltana-emulated"})

    @routes.get("/v1/models")
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                                              "created": 0, "owned_by": "voltana-emulated"}]})

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=_metrics_text(engine), content_type="text/plain", charset="utf-8")


def _control_routes(engine: EmulatedEngine, routes: Any) -> None:
    """voltana's own messages: the instance's state, its clock setter, and the P/D notices between engines."""
    from aiohttp import web

    @routes.get("/_voltana/state")
    async def state(request: web.Request) -> web.Response:
        return web.json_response(engine.state())

    @routes.post("/_voltana/clock")
    async def clock(request: web.Request) -> web.Response:
        body = await read_json(request)
        mhz = body.get("clock_mhz") if isinstance(body, dict) else None
        if isinstance(mhz, bool) or not isinstance(mhz, int):
            return error_response(400, "give {\"clock_mhz\": <integer MHz>}")
        try:
            engine.set_clock(mhz)
        except UserError as exc:
            return error_response(400, exc.problem)
        return web.json_response({"clock_mhz": mhz})

    @routes.post("/_voltana/allocated")
    async def allocated(request: web.Request) -> web.Response:
        body = await read_json(request)
        if engine.role != "prefill" or not isinstance(body, dict) or not isinstance(body.get("room"), int) \
                or not isinstance(body.get("decode_url"), str):
            return error_response(400, "allocation notices go to a prefill's bootstrap server: {room, decode_url}")
        engine.allocated(body["room"], body["decode_url"])
        return web.json_response({"ok": True})

    @routes.post("/_voltana/kv")
    async def kv(request: web.Request) -> web.Response:
        body = await read_json(request)
        if engine.role != "decode" or not isinstance(body, dict) or not isinstance(body.get("room"), int):
            return error_response(400, "KV hand-overs go to a decode instance: {room}")
        if not engine.kv_arrived(body["room"]):
            return error_response(404, f"no request with bootstrap_room {body['room']} here", "not_found")
        return web.json_response({"ok": True})


def _inference_routes(engine: EmulatedEngine, routes: Any) -> None:
    """``/generate``, ``/v1/completions`` and ``/v1/chat/completions``, in the instance's P/D role."""
    from aiohttp import web

    max_context = getattr(getattr(engine.model, "model", None), "max_context_tokens", 1 << 30)

    async def infer(request: web.Request, kind: str) -> web.StreamResponse:
        try:
            req = parse_request(kind, await read_json(request), max_context)
            if engine.role == "prefill":
                return web.json_response(await engine.prefill(req))
            job = engine.decode(req)
        except BadRequest as exc:
            return error_response(400, str(exc))
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        model = req.model or engine.model_name
        complete = False
        try:
            if not req.stream:
                got = [n async for n in _token_stream(job)]
                complete = True
                return web.json_response(_bodies(kind, req, rid, len(got), model, True))
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await resp.prepare(request)
            async for n in _token_stream(job):
                await resp.write(_sse(_chunk(kind, req, rid, n, model, n == req.output_tokens)))
            complete = True
            if req.include_usage and kind != "generate":
                usage = _bodies(kind, req, rid, req.output_tokens, model, True)["usage"]
                obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
                await resp.write(_sse({"id": rid, "object": obj, "created": int(time.time()), "model": model,
                                       "choices": [], "usage": usage}))
            try:
                await resp.write(_sse("[DONE]"))
                await resp.write_eof()
            except ConnectionError:
                pass  # every token was sent: a client that closed now lost nothing
            return resp
        except ConnectionError:  # the client (the router) went away mid-answer
            return web.Response(status=499)
        finally:
            engine.finish_job(job, complete)

    @routes.post("/generate")
    async def generate(request: web.Request) -> web.StreamResponse:
        return await infer(request, "generate")

    @routes.post("/v1/completions")
    async def completions(request: web.Request) -> web.StreamResponse:
        return await infer(request, "completions")

    @routes.post("/v1/chat/completions")
    async def chat(request: web.Request) -> web.StreamResponse:
        return await infer(request, "chat")


def _metrics_text(engine: EmulatedEngine) -> bytes:
    """SGLang's gauge names (``sglang:``) for what an emulated instance can say, plus its energy and clock."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

    reg = CollectorRegistry()
    st = engine.state()
    labels = {"role": engine.role, "model_name": engine.model_name}
    for name, value, doc in (("sglang:num_running_reqs", st["running"], "running requests"),
                             ("sglang:num_queue_reqs", st["waiting"], "queued requests"),
                             ("voltana_emulated_clock_mhz", st["clock_mhz"], "SM clock of the emulated GPU (MHz)")):
        Gauge(name, doc, list(labels), registry=reg).labels(**labels).set(value)
    c = Counter("voltana_emulated_energy_joules", "energy of the emulated GPU since start (J)", list(labels),
                registry=reg)
    c.labels(**labels).inc(st["total_j"])
    return bytes(generate_latest(reg))


async def serve_engine(engine: EmulatedEngine, host: str, port: int, bootstrap_port: int | None,
                       ready: Callable[[], None] | None = None) -> None:
    """Serve ``engine`` on ``host:port`` (a prefill's bootstrap server on ``bootstrap_port`` too) until cancelled."""
    from aiohttp import web

    app = make_app(engine)
    # A handler whose client disconnects is cancelled: its request is aborted in the scheduler.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    sites = [web.TCPSite(runner, host, port)]
    if bootstrap_port is not None:
        sites.append(web.TCPSite(runner, host, bootstrap_port))
    for site in sites:
        await site.start()
    loop = asyncio.ensure_future(engine.run())
    if ready:
        ready()
    parent = os.getppid()
    try:
        # Until cancelled, or until the process that started it is gone (even by kill -9): no orphan engine.
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        await asyncio.sleep(2.0)  # orphaned: let its sidecar reset the clock through it first
    finally:
        loop.cancel()
        await runner.cleanup()


def make_engine(role: str, gpu: str, model: str, tp: int, url: str, clock_mhz: int | None,
                post: Callable[[str, dict[str, Any]], Any]) -> EmulatedEngine:
    """An emulated engine of ``gpu`` x ``model`` (the analytical model is its ground truth)."""
    pm = PerfModel(gpu_spec(gpu), model_spec(model), engine_spec(), tp=tp)
    return EmulatedEngine(role, pm, model, url, clock_mhz or pm.clocks[-1], post)


def main(argv: list[str] | None = None) -> int:
    """``python -m voltana_cli.core.live.run_engine``: one emulated instance in the foreground (``voltana serve
    --engine sim`` starts one per instance)."""
    ap = argparse.ArgumentParser(prog="voltana-emulated-engine", description=main.__doc__)
    ap.add_argument("--role", required=True, choices=["prefill", "decode"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bootstrap-port", type=int)
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--clock-mhz", type=int)
    ap.add_argument("--forward-pass-metrics-ipc-name", help="Publish every iteration's state here, as SGLang's "
                    "--forward-pass-metrics-ipc-name does (ipc:///path/name; the socket is name.0).")
    a = ap.parse_args(argv)
    try:
        import aiohttp  # noqa: F401  (the server; checked here for one clear line)
    except ImportError:
        print("error: the emulated engine needs aiohttp: pip install aiohttp", file=sys.stderr)
        return 2

    async def amain() -> None:
        from urllib.parse import urlsplit

        from voltana_cli.core.live.upstream import Upstream, UpstreamError

        # The P/D messages between engines go on kept-alive connections (the router's lean client): they
        # are on every request's path to its first token.
        upstream = Upstream(connect_timeout_s=5.0, read_timeout_s=30.0)
        try:
            async def post(url: str, body: dict[str, Any]) -> None:
                u = urlsplit(url)
                data = json.dumps(body).encode()
                for attempt in range(3):
                    try:
                        async with await upstream.post(u.hostname or "127.0.0.1", u.port or 80, u.path, data) as r:
                            await r.read()
                            return
                    except UpstreamError:
                        await asyncio.sleep(0.05 * (attempt + 1) * (1 + random.random()))

            eng = make_engine(a.role, a.gpu, a.model, a.tp, f"http://{a.host}:{a.port}", a.clock_mhz, post)
            stream = None
            if a.forward_pass_metrics_ipc_name:
                from voltana_cli.core.live.forward_pass import ForwardPassPublisher

                stream = ForwardPassPublisher(a.forward_pass_metrics_ipc_name)
                eng.publish = stream.send
            try:
                await serve_engine(eng, a.host, a.port, a.bootstrap_port,
                                   ready=lambda: print(f"ready {a.role} on {a.host}:{a.port}", flush=True))
            finally:
                if stream is not None:
                    stream.close()
        finally:
            upstream.close()

    try:
        from voltana_cli.core.live import evloop

        evloop.run(amain())
    except KeyboardInterrupt:
        pass
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {a.role} instance on {a.host}:{a.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
