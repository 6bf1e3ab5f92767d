"""Discrete-event simulator of a prefill/decode (P/D) disaggregated cluster.

N prefill instances batch waiting prompts under a chunked-prefill token budget; each finished prompt's KV
cache travels to the decode instance the policy's router chose; M decode instances run continuous batching
under a KV-cache capacity limit, admitting waiting requests at iteration boundaries. Every iteration asks
the instance's frequency controller for a clock; a clock change takes ``switch_s`` to land (the iteration
runs at the old clock until then). Between iterations an instance idles at its held clock. The "real" GPU
is the performance model times a per-iteration lognormal noise that the controller's predictor never sees.

Token timing: a request's first token (computed by its prefill) reaches the user when its decode instance
admits it; every later token ends a decode iteration. So TTFT = admission - arrival, and its ITLs are the
durations of the ``output_tokens - 1`` decode iterations that follow (back to back while it runs).

Events are a heap of ``(time, sequence, kind, payload)``; arrivals are merged from the sorted arrival
array. Each run owns its ``numpy.random.Generator``: same seed, same result.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from voltana_cli.core.policy.controller import Observation
from voltana_cli.core.errors import UserError
from voltana_cli.core.models.analytical import PerfModel
from voltana_cli.core.policy.registry import Policy
from voltana_cli.core.policy.router import InstanceView
from voltana_cli.core.workloads.workload import Workload

_PREFILL_DONE, _DECODE_DONE, _KV_ARRIVE = 0, 1, 2
_RATE_TAU_S = 1.0  # time constant of the per-instance arrival-rate estimate given to controllers
_NOISE_CHUNK = 65536


@dataclass(frozen=True)
class ClusterConfig:
    """Shape and physics knobs of a simulated cluster."""

    n_prefill: int = 2
    n_decode: int = 2
    noise: float = 0.02  # sigma of the per-iteration lognormal factor on time (the "real" GPU's jitter)
    switch_ms: float | None = None  # clock-switch latency; None: the GPU spec's
    chunked_prefill_tokens: int | None = None  # None: the engine spec's
    record_timeline: bool = False

    def validate(self) -> None:
        if self.n_prefill < 1:
            raise UserError(f"--prefill {self.n_prefill} must be >= 1")
        if self.n_decode < 1:
            raise UserError(f"--decode {self.n_decode} must be >= 1")
        if self.noise < 0:
            raise UserError(f"noise {self.noise} must be >= 0")


@dataclass
class InstanceStats:
    """Energy and time of one instance over the run."""

    role: str
    index: int
    busy_energy_j: float = 0.0
    idle_energy_j: float = 0.0
    busy_s: float = 0.0
    idle_s: float = 0.0
    iterations: int = 0
    clock_switches: int = 0
    clock_busy_s: dict[int, float] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (time, clock) at each change

    @property
    def energy_j(self) -> float:
        return self.busy_energy_j + self.idle_energy_j


@dataclass
class SimResult:
    """Per-request outcomes (arrays indexed by request) and per-instance energy."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_s: np.ndarray
    finish_s: np.ndarray
    itl_mean_s: np.ndarray  # nan for requests with one output token
    itl_max_s: np.ndarray
    itl_count: np.ndarray  # ITL samples per request (output_tokens - 1)
    prefill_instance: np.ndarray
    decode_instance: np.ndarray
    token_itl_s: np.ndarray  # every decode iteration's duration ...
    token_itl_weight: np.ndarray  # ... and how many requests got a token from it
    decode_durations: list[np.ndarray]  # per decode instance, iteration durations in order
    decode_first_iter: np.ndarray  # per request, index of its first decode iteration on its instance
    instances: list[InstanceStats]
    start_s: float
    end_s: float
    events: int

    @property
    def num_requests(self) -> int:
        return len(self.arrival_s)


def simulate(
    workload: Workload,
    model: PerfModel,
    policy: Policy,
    cluster: ClusterConfig,
    rng: np.random.Generator,
) -> SimResult:
    """Run ``workload`` through a P/D cluster under ``policy``; deterministic for a given ``rng`` state."""
    cluster.validate()
    n = len(workload)
    arrival = workload.arrival_s.astype(float)
    inp = workload.input_tokens.astype(np.int64)
    out = workload.output_tokens.astype(np.int64)
    if n == 0:
        raise UserError("the workload has no requests: raise --duration-s, --num-prompts or --request-rate")
    if np.any(np.diff(arrival) < 0):
        raise ValueError("workload arrivals must be sorted")
    cap = model.kv_capacity_tokens
    biggest = int((inp + out).max())
    if biggest > cap:
        raise UserError(
            f"a request needs {biggest} KV tokens but a decode instance holds {cap}: "
            "raise --tp, or filter the dataset to shorter requests"
        )
    inp_l = inp.tolist()
    out_l = out.tolist()
    arr_l = arrival.tolist()
    budget = cluster.chunked_prefill_tokens or model.engine.chunked_prefill_tokens
    switch_s = (model.gpu.clock_switch_ms if cluster.switch_ms is None else cluster.switch_ms) / 1e3
    sigma = cluster.noise
    max_b = model.max_batch

    # Per-request outcomes.
    ttft = [math.nan] * n
    finish = [math.nan] * n
    first_iter = [-1] * n
    p_of = [-1] * n
    d_of = [-1] * n

    # Noise stream.
    noise_buf: list[float] = []
    noise_pos = 0

    def refill() -> list[float]:
        if sigma > 0:
            return np.exp(sigma * rng.standard_normal(_NOISE_CHUNK) - 0.5 * sigma * sigma).tolist()
        return [1.0] * _NOISE_CHUNK

    noise_buf = refill()

    # Cost tables, cached per clock.
    dec_tabs: dict[int, tuple[list[float], list[float], float, float]] = {}
    pre_tabs: dict[int, tuple[list[float], list[float], float, float, float, float]] = {}
    idle_p: dict[int, float] = {}

    def dtab(c: int) -> tuple[list[float], list[float], float, float]:
        t = dec_tabs.get(c)
        if t is None:
            tb = model.decode_table(c)
            t = dec_tabs[c] = (tb.t0, tb.e0, tb.t_kv, tb.e_kv)
        return t

    def ptab(c: int) -> tuple[list[float], list[float], float, float, float, float]:
        t = pre_tabs.get(c)
        if t is None:
            tb = model.prefill_table(c, budget)
            t = pre_tabs[c] = (tb.tg, tb.eg, tb.t_seq, tb.e_seq, tb.t_pair, tb.e_pair)
        return t

    def pidle(c: int) -> float:
        p = idle_p.get(c)
        if p is None:
            p = idle_p[c] = model.idle_power_w(c)
        return p

    P, D = cluster.n_prefill, cluster.n_decode
    p_ctrl = [policy.make_prefill_controller() for _ in range(P)]
    d_ctrl = [policy.make_decode_controller() for _ in range(D)]
    router = policy.decode_router
    p_stats = [InstanceStats("prefill", i) for i in range(P)]
    d_stats = [InstanceStats("decode", i) for i in range(D)]
    for st, ctl in zip(p_stats + d_stats, p_ctrl + d_ctrl, strict=True):
        c0 = ctl.idle_clock_mhz
        st.timeline.append((float(arrival[0]), c0))
    p_clock = [c.idle_clock_mhz for c in p_ctrl]
    d_clock = [c.idle_clock_mhz for c in d_ctrl]
    for c in set(p_clock + d_clock):
        model.check_clock(c)

    # Prefill state.
    p_queue: list[deque[list[int]]] = [deque() for _ in range(P)]  # [rid, remaining, offset]
    p_qtok = [0] * P
    p_busy = [False] * P
    p_batch: list[list[int]] = [[] for _ in range(P)]  # chunk sizes of the running batch, head first
    p_last = [float(arrival[0])] * P
    p_rate = [0.0] * P
    p_rate_t = [0.0] * P

    # Decode state.
    d_wait: list[deque[int]] = [deque() for _ in range(D)]
    d_wait_tok = [0] * D
    d_inflight = [0] * D  # routed, KV still in transit
    d_run: list[list[tuple[int, int]]] = [[] for _ in range(D)]  # heap of (last iteration index, rid)
    d_B = [0] * D
    d_K = [0] * D
    d_R = [0] * D  # reserved KV tokens: input + output of running requests
    d_iter = [0] * D
    d_busy = [False] * D
    d_last = [float(arrival[0])] * D
    d_dur: list[list[float]] = [[] for _ in range(D)]
    d_bat: list[list[int]] = [[] for _ in range(D)]
    d_rate = [0.0] * D
    d_rate_t = [0.0] * D

    heap: list[tuple[float, int, int, int]] = []
    seq = 0
    events = 0
    record = cluster.record_timeline

    def account_idle(st: InstanceStats, ctl, now: float, last: float, clock: int) -> int:
        gap = now - last
        if gap <= 0:
            return clock
        st.idle_s += gap
        to = ctl.idle_timeout_s
        if gap <= to:
            st.idle_energy_j += pidle(clock) * gap
            return clock
        st.idle_energy_j += pidle(clock) * to
        ctl.on_idle_timeout()
        low = ctl.idle_clock_mhz
        st.idle_energy_j += pidle(low) * (gap - to)
        if record and low != clock:
            st.timeline.append((last + to, low))
        return low

    def start_prefill(p: int, now: float) -> None:
        nonlocal seq, noise_pos, noise_buf
        st, ctl = p_stats[p], p_ctrl[p]
        cur = account_idle(st, ctl, now, p_last[p], p_clock[p])
        q = p_queue[p]
        left = budget
        tokens = 0
        pairs = 0.0
        chunks = p_batch[p]
        chunks.clear()
        for item in q:
            c = item[1] if item[1] < left else left
            off = item[2]
            pairs += c * (off + (c + 1) * 0.5)
            chunks.append(c)
            tokens += c
            left -= c
            if left <= 0:
                break
        nseq = len(chunks)
        rate = p_rate[p] * math.exp((p_rate_t[p] - now) / _RATE_TAU_S)
        obs = Observation(now, nseq, tokens, len(q) - nseq, now - arr_l[q[0][0]], rate)
        new = ctl.decide(obs)
        tg, eg, ts, es, tp_, ep = ptab(new)
        dt = tg[tokens] + nseq * ts + pairs * tp_
        de = eg[tokens] + nseq * es + pairs * ep
        if new != cur:
            st.clock_switches += 1
            og, oe, ots, oes, otp, oep = ptab(cur)
            dt_old = og[tokens] + nseq * ots + pairs * otp
            de_old = oe[tokens] + nseq * oes + pairs * oep
            x = switch_s if switch_s < dt_old else dt_old
            frac = x / dt_old
            dt = x + (1.0 - frac) * dt
            de = de_old * frac + de * (1.0 - frac)
            if record:
                st.timeline.append((now + x, new))
            p_clock[p] = new
        if noise_pos >= _NOISE_CHUNK:
            noise_buf = refill()
            noise_pos = 0
        f = noise_buf[noise_pos]
        noise_pos += 1
        dt *= f
        de *= f
        st.busy_energy_j += de
        st.busy_s += dt
        st.iterations += 1
        cb = st.clock_busy_s
        cb[new] = cb.get(new, 0.0) + dt
        p_busy[p] = True
        seq += 1
        heapq.heappush(heap, (now + dt, seq, _PREFILL_DONE, p))

    def route_decode(rid: int, now: float) -> int:
        views = [
            InstanceView(d, d_B[d] + len(d_wait[d]) + d_inflight[d], d_R[d] + d_wait_tok[d], d_clock[d])
            for d in range(D)
        ]
        return router.choose(inp_l[rid], views)

    def prefill_done(p: int, now: float) -> None:
        nonlocal seq
        q = p_queue[p]
        for c in p_batch[p]:
            item = q[0]
            item[1] -= c
            item[2] += c
            p_qtok[p] -= c
            if item[1] == 0:
                q.popleft()
                rid = item[0]
                d = route_decode(rid, now)
                d_of[rid] = d
                d_inflight[d] += 1
                seq += 1
                heapq.heappush(heap, (now + model.kv_transfer_s(inp_l[rid]), seq, _KV_ARRIVE, rid))
        p_busy[p] = False
        p_last[p] = now
        if q:
            start_prefill(p, now)

    def start_decode(d: int, now: float) -> None:
        nonlocal seq, noise_pos, noise_buf
        st, ctl = d_stats[d], d_ctrl[d]
        cur = account_idle(st, ctl, now, d_last[d], d_clock[d])
        w = d_wait[d]
        it = d_iter[d]
        run = d_run[d]
        while w:
            rid = w[0]
            need = inp_l[rid] + out_l[rid]
            if d_R[d] + need > cap and d_B[d] > 0:
                break
            if d_B[d] >= max_b:
                break
            w.popleft()
            d_wait_tok[d] -= need
            ttft[rid] = now - arr_l[rid]
            if out_l[rid] <= 1:
                finish[rid] = now
                continue
            first_iter[rid] = it
            d_B[d] += 1
            d_K[d] += inp_l[rid]
            d_R[d] += need
            heapq.heappush(run, (it + out_l[rid] - 2, rid))
        B = d_B[d]
        if B == 0:
            d_busy[d] = False
            d_last[d] = now
            return
        K = d_K[d]
        rate = d_rate[d] * math.exp((d_rate_t[d] - now) / _RATE_TAU_S)
        new = ctl.decide(Observation(now, B, K, len(w), 0.0, rate))
        t0, e0, tk, ek = dtab(new)
        dt = t0[B] + K * tk
        de = e0[B] + K * ek
        if new != cur:
            st.clock_switches += 1
            o0, oe0, otk, oek = dtab(cur)
            dt_old = o0[B] + K * otk
            x = switch_s if switch_s < dt_old else dt_old
            frac = x / dt_old
            dt = x + (1.0 - frac) * dt
            de = (oe0[B] + K * oek) * frac + de * (1.0 - frac)
            if record:
                st.timeline.append((now + x, new))
            d_clock[d] = new
        if noise_pos >= _NOISE_CHUNK:
            noise_buf = refill()
            noise_pos = 0
        f = noise_buf[noise_pos]
        noise_pos += 1
        dt *= f
        de *= f
        st.busy_energy_j += de
        st.busy_s += dt
        st.iterations += 1
        cb = st.clock_busy_s
        cb[new] = cb.get(new, 0.0) + dt
        d_dur[d].append(dt)
        d_bat[d].append(B)
        d_busy[d] = True
        seq += 1
        heapq.heappush(heap, (now + dt, seq, _DECODE_DONE, d))

    def decode_done(d: int, now: float) -> None:
        it = d_iter[d]
        run = d_run[d]
        d_K[d] += d_B[d]
        while run and run[0][0] == it:
            _, rid = heapq.heappop(run)
            finish[rid] = now
            d_B[d] -= 1
            d_K[d] -= inp_l[rid] + out_l[rid] - 1
            d_R[d] -= inp_l[rid] + out_l[rid]
        d_iter[d] = it + 1
        d_busy[d] = False
        d_last[d] = now
        if d_B[d] > 0 or d_wait[d]:
            start_decode(d, now)

    last_t = -math.inf
    ai = 0
    inf = math.inf
    while True:
        na = arr_l[ai] if ai < n else inf
        if heap and heap[0][0] <= na:
            now, _, kind, x = heapq.heappop(heap)
            if now < last_t:  # pragma: no cover - an invariant, tested
                raise RuntimeError("simulation time went backwards")
            last_t = now
            events += 1
            if kind == _DECODE_DONE:
                decode_done(x, now)
            elif kind == _PREFILL_DONE:
                prefill_done(x, now)
            else:
                d = d_of[x]
                d_inflight[d] -= 1
                d_wait[d].append(x)
                d_wait_tok[d] += inp_l[x] + out_l[x]
                d_rate[d] = d_rate[d] * math.exp((d_rate_t[d] - now) / _RATE_TAU_S) + 1.0 / _RATE_TAU_S
                d_rate_t[d] = now
                if not d_busy[d]:
                    start_decode(d, now)
        elif ai < n:
            now = na
            last_t = now
            events += 1
            rid = ai
            ai += 1
            best = 0
            for p in range(1, P):
                if p_qtok[p] < p_qtok[best]:
                    best = p
            p_of[rid] = best
            p_queue[best].append([rid, inp_l[rid], 0])
            p_qtok[best] += inp_l[rid]
            p_rate[best] = p_rate[best] * math.exp((p_rate_t[best] - now) / _RATE_TAU_S) + 1.0 / _RATE_TAU_S
            p_rate_t[best] = now
            if not p_busy[best]:
                start_prefill(best, now)
        else:
            break

    finish_a = np.array(finish)
    end = float(np.nanmax(finish_a))
    start = float(arrival[0])
    for st, ctl, last, clock in zip(p_stats, p_ctrl, p_last, p_clock, strict=True):
        account_idle(st, ctl, end, last, clock)
    for st, ctl, last, clock in zip(d_stats, d_ctrl, d_last, d_clock, strict=True):
        account_idle(st, ctl, end, last, clock)

    return _collect(
        arrival, inp, out, ttft, finish_a, first_iter, p_of, d_of, d_dur, d_bat,
        p_stats + d_stats, start, end, events,
    )


def _collect(
    arrival: np.ndarray, inp: np.ndarray, out: np.ndarray, ttft: list[float],
    finish: np.ndarray, first_iter: list[int], p_of: list[int], d_of: list[int],
    d_dur: list[list[float]], d_bat: list[list[int]], stats: list[InstanceStats],
    start: float, end: float, events: int,
) -> SimResult:
    """Turn the loop's lists into per-request ITL statistics with numpy (no per-token Python work)."""
    n = len(arrival)
    fi = np.array(first_iter)
    do = np.array(d_of)
    cnt = np.maximum(out - 1, 0)
    itl_mean = np.full(n, np.nan)
    itl_max = np.full(n, np.nan)
    durs = [np.asarray(x, dtype=float) for x in d_dur]
    for d, dur in enumerate(durs):
        sel = np.flatnonzero((do == d) & (cnt > 0))
        if len(sel) == 0:
            continue
        s = fi[sel]
        e = s + cnt[sel]
        c = np.concatenate([[0.0], np.cumsum(dur)])
        itl_mean[sel] = (c[e] - c[s]) / cnt[sel]
        # Segment maxima: reduceat over [s, e) boundaries interleaved.
        idx = np.empty(2 * len(sel), dtype=np.int64)
        idx[0::2] = s
        idx[1::2] = np.minimum(e, len(dur) - 1)
        mx = np.maximum.reduceat(dur, idx)[0::2]
        # reduceat gives dur[s] alone where s == the clipped end; fix the last segments ending at the array end.
        tail = e == len(dur)
        if np.any(tail):
            mx[tail] = [dur[a:].max() for a in s[tail]]
        itl_max[sel] = mx
    return SimResult(
        arrival_s=arrival,
        input_tokens=inp,
        output_tokens=out,
        ttft_s=np.array(ttft),
        finish_s=finish,
        itl_mean_s=itl_mean,
        itl_max_s=itl_max,
        itl_count=cnt,
        prefill_instance=np.array(p_of),
        decode_instance=do,
        token_itl_s=np.concatenate(durs) if durs else np.zeros(0),
        token_itl_weight=np.concatenate([np.asarray(b, dtype=float) for b in d_bat]) if d_bat else np.zeros(0),
        decode_durations=durs,
        decode_first_iter=fi,
        instances=stats,
        start_s=start,
        end_s=end,
        events=events,
    )
