"""``voltana bench --url``: replay a workload against a live cluster's router and measure it at the client.

The workload is the simulated bench's own (``Scenario.workload``: same dataset, arrivals and seed). Each
request is sent at its arrival time as a streamed ``/generate`` with token ids (``input_ids``, as many as
its input tokens) and ``max_new_tokens`` = its output tokens with ``ignore_eos``, so the cluster does the
work the trace asks for. Times are taken at the client: TTFT from the send to the first token; every later
token's ITL from the stream, counted by tokens, not by chunks: SGLang's stream reports the running
``completion_tokens``, and a chunk that carries k new tokens gives each of them 1/k of the gap since the
previous chunk. Energy is the router's ``/energy`` difference over the run. The result is a ``RequestLog``,
so ``metrics.summarize`` makes the same figures as for a simulated run.

A request that fails (HTTP error, broken stream, timeout) counts as a miss: no first token, no ITLs.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.live import trace
from voltana_cli.core.live.sse import DONE, sse_message
from voltana_cli.core.metrics import InstanceRecord, RequestLog
from voltana_cli.core.workloads import Workload

#: Token id every prompt is made of (any id a vocabulary has; the emulated engine only counts them).
PROMPT_TOKEN_ID = 1000
#: Requests sent one after another before the measured run (not recorded).
DEFAULT_WARMUP = 2


@dataclass
class LiveResult:
    """One live run: its request log, the policy the server reported, and the requests that failed."""

    log: RequestLog
    policy: str
    failed: int
    errors: list[str]


@dataclass
class _Outcome:
    sent: float = math.nan
    first: float = math.nan
    finish: float = math.nan
    gaps: list[float] | None = None
    error: str | None = None


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def get_json(session: Any, url: str, api_key: str | None = None) -> Any:
    import aiohttp

    try:
        async with session.get(url, headers=_headers(api_key), timeout=aiohttp.ClientTimeout(total=10)) as r:
            if r.status != 200:
                raise UserError(f"{url} answered HTTP {r.status}: {(await r.text())[:200]}", field="url")
            return await r.json()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UserError(f"cannot reach {url}: {exc.__class__.__name__}: {exc}; is voltana serve running there?",
                        field="url") from None


async def set_policy(session: Any, base: str, policy: str, token: str | None) -> dict[str, Any]:
    """Ask the router to run ``policy`` (admin API); its refusal is a ``UserError`` with the server's words."""
    import aiohttp

    if not token:
        raise UserError(f"--policy {policy} with --url sets the server's policy through its admin API: give "
                        "--admin-token (or VOLTANA_ADMIN_TOKEN)", field="admin_token")
    try:
        async with session.post(f"{base}/admin/policy", json={"policy": policy}, headers=_headers(token),
                                timeout=aiohttp.ClientTimeout(total=30)) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                msg = (body or {}).get("error", {}).get("message", f"HTTP {r.status}")
                raise UserError(f"the server refused policy {policy!r}: {msg}", field="policies")
            return dict(body)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UserError(f"cannot reach {base}/admin/policy: {exc.__class__.__name__}", field="url") from None


async def _one(session: Any, base: str, n_in: int, n_out: int, api_key: str | None, t0: float,
               timeout_s: float) -> _Outcome:
    import aiohttp

    body = {"input_ids": [PROMPT_TOKEN_ID] * n_in, "stream": True,
            "sampling_params": {"max_new_tokens": n_out, "ignore_eos": True}}
    out = _Outcome(gaps=[], sent=time.monotonic() - t0)
    trace.event("client_sent")
    got, last = 0, 0.0
    try:
        async with session.post(f"{base}/generate", json=body, headers=_headers(api_key),
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            if r.status != 200:
                out.error = f"HTTP {r.status}: {(await r.text())[:160]}"
                return out
            async for raw in r.content:
                msg = sse_message(raw)
                if msg is None:
                    continue
                if msg == DONE or isinstance(msg, str):
                    break
                now = time.monotonic() - t0
                if "error" in msg:
                    out.error = str(msg["error"].get("message", msg["error"]))[:160]
                    return out
                total = int(msg.get("meta_info", {}).get("completion_tokens", got + 1))
                new = total - got
                if new <= 0:
                    continue
                if got == 0:
                    trace.event("client_first_token")
                    out.first = now
                    new -= 1  # the first token is TTFT, not an ITL
                    last = now
                if new > 0:
                    share = (now - last) / new
                    out.gaps.extend([share] * new)  # type: ignore[union-attr]
                    last = now
                got = total
        if got == 0:
            out.error = "the stream ended without a token"
        else:
            out.finish = last
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, ValueError) as exc:
        out.error = f"{exc.__class__.__name__}: {exc}"[:160]
    return out


def client_session() -> Any:
    """The live client's HTTP session: no cap on connections (each request in flight holds one)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def replay(session: Any, base: str, wl: Workload, api_key: str | None = None, warmup: int = DEFAULT_WARMUP,
                 timeout_s: float = 600.0, progress: Callable[[int, int], None] | None = None) -> LiveResult:
    """Send ``wl`` to the router at ``base`` at its arrival times, through ``session`` (``client_session``);
    return what the client measured."""
    base = base.rstrip("/")
    cluster = await get_json(session, f"{base}/cluster")
    for _ in range(warmup):
        await _one(session, base, 16, 4, api_key, time.monotonic(), timeout_s)
    e0 = await get_json(session, f"{base}/energy")
    arrivals = wl.arrival_s.astype(float) - float(wl.arrival_s[0])
    n = len(wl)
    t0 = time.monotonic()
    done = 0

    async def send(i: int) -> _Outcome:
        nonlocal done
        delay = arrivals[i] - (time.monotonic() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        # Times count from t0. A request arrives when it is sent (``_Outcome.sent``): a client that falls behind
        # its schedule delays the request, as a late user would, and TTFT counts from the send, as SGLang's
        # and vLLM's serving benchmarks count it.
        res = await _one(session, base, int(wl.input_tokens[i]), int(wl.output_tokens[i]), api_key, t0,
                         timeout_s)
        done += 1
        if progress:
            progress(done, n)
        return res

    outs = await asyncio.gather(*(send(i) for i in range(n)))
    e1 = await get_json(session, f"{base}/energy")
    return LiveResult(_log(wl, arrivals, outs, e0, e1), str(cluster.get("policy", "")),
                      sum(1 for o in outs if o.error), [o.error for o in outs if o.error][:5])


def _log(wl: Workload, arrivals: np.ndarray, outs: list[_Outcome], e0: dict[str, Any], e1: dict[str, Any]) -> RequestLog:
    n = len(outs)
    sent = np.array([o.sent for o in outs], float)
    arrivals = np.where(np.isfinite(sent), sent, arrivals)  # when each request was sent (late sends included)
    first = np.array([o.first for o in outs], float)
    finish = np.array([o.finish if not o.error else math.nan for o in outs], float)
    streams = [np.array(o.gaps if not o.error else [], float) for o in outs]
    counts = np.array([len(s) for s in streams], np.int64)
    instances = []
    before = {x["url"]: x for x in e0.get("instances", [])}
    for i, x in enumerate(e1.get("instances", [])):
        b = before.get(x["url"], {})

        def delta(key: str, x: dict[str, Any] = x, b: dict[str, Any] = b) -> float:
            return float((x.get(key) or 0.0) - (b.get(key) or 0.0))

        busy, idle = delta("busy_j"), delta("idle_j")
        if x.get("busy_j") is None:  # an instance that reports only its total
            busy, idle = delta("energy_j"), 0.0
        instances.append(InstanceRecord(x["role"], i, busy_energy_j=busy, idle_energy_j=idle))
    end = float(np.nanmax(finish)) if np.isfinite(finish).any() else float(arrivals[-1])
    ok = np.isfinite(first)
    return RequestLog(
        arrival_s=arrivals, input_tokens=wl.input_tokens.astype(np.int64), output_tokens=wl.output_tokens.astype(np.int64),
        first_token_s=np.where(ok, first, math.nan), finish_s=finish,
        prefill_instance=np.full(n, -1, np.int64), decode_instance=np.full(n, -1, np.int64),
        gap_stream=np.where(counts > 0, np.arange(n), -1).astype(np.int64), gap_start=np.zeros(n, np.int64),
        gap_count=counts, streams=streams, stream_weights=[np.ones(len(s)) for s in streams],
        instances=instances, start_s=0.0, end_s=end, events=n,
    )


@dataclass
class LiveRun:
    """One finished (rate, policy) run of a live bench."""

    rate: float
    policy: str
    log: RequestLog
    summary: dict[str, Any]


def run_live_bench(prep: Any, url: str, policies: list[str] | None, admin_token: str | None, api_key: str | None,
                   done: list[LiveRun], warmup: int = DEFAULT_WARMUP,
                   progress: Callable[[str], None] | None = None) -> None:
    """Every rate of the prepared bench against the live cluster at ``url``: for each rate the simulated
    bench's own workload, once per policy in ``policies`` (set through the admin API) or once with the
    policy the server runs (``policies`` is ``None``). Finished runs are appended to ``done`` as they
    finish, so a caller interrupted midway still has them."""
    from voltana_cli.core.metrics import summarize

    cfg = prep.cfg

    async def main() -> None:
        async with client_session() as session:
            await get_json(session, f"{url.rstrip('/')}/cluster")  # reachable before any work
            for rate in cfg.request_rates:
                wl = prep.scenario.workload(rate, cfg.seed)
                names: list[str | None] = list(policies) if policies else [None]
                for name in names:
                    if name is not None:
                        await set_policy(session, url.rstrip("/"), name, admin_token)
                    if progress:
                        progress(f"{rate:g} req/s, {name or 'the server policy'}: {len(wl)} requests")
                    res = await replay(session, url, wl, api_key, warmup)
                    s = summarize(res.log, cfg.slo_ttft_ms / 1e3, cfg.slo_itl_ms / 1e3).as_dict()
                    s["failed_requests"] = res.failed
                    if res.errors:
                        s["first_errors"] = res.errors
                    done.append(LiveRun(rate, res.policy, res.log, s))

    from voltana_cli.core.live import evloop

    evloop.run(main())  # its timers fire on time: each request is sent at its arrival, as the simulator has it


def live_report(prep: Any, url: str, done: list[LiveRun], partial: bool = False) -> dict[str, Any]:
    """The bench JSON of the live runs in ``done`` (the simulated bench's schema; ``backend: live``)."""
    from voltana_cli.core.bench import bench_report

    out_runs = [{"request_rate": r.rate, "policy": r.policy, **r.summary} for r in done]
    live = {"backend": "live", "url": url, "ground_truth": "the cluster behind the router",
            "predictor_used": "the server's", **({"partial": True} if partial else {})}
    return bench_report(prep, out_runs, [], live)
