"""The voltana router: an async HTTP proxy in front of a P/D cluster that speaks SGLang's P/D protocol and
places each request with the registry's pure routers.

Per request (``/generate``, ``/v1/completions``, ``/v1/chat/completions``): validate the body (the same
validator as the emulated engine: 4xx JSON on bad input), pick a prefill instance with the policy's
prefill router and a decode instance with its decode router (``core.policy``: the same objects the
simulator runs), add ``bootstrap_host``/``bootstrap_port``/``bootstrap_room``, post the body to both at
once, stream the decode's answer back as it comes and discard the prefill's. A client that goes away
has both upstream requests closed. The two posts go through ``upstream.Upstream`` (keep-alive HTTP/1.1
on llhttp; aiohttp's client cost more CPU per post than the rest of the router together). A backend that
fails is answered with a JSON error (502), marked unhealthy and probed again in the background; the other
requests are not disturbed. In-flight requests are bounded (503 when full).

The routers see ``InstanceView``s that this process keeps: requests and tokens it has sent to each
instance and not yet seen finish (the instances' own live state reaches the controllers through their
sidecars). ``GET /cluster`` also gives each prefill instance's queue as only the router knows it: how long
each request it has not answered yet has waited, and the TTFT of its latest request; its sidecar reads them
(``sidecar.RouterState``), so that its controller sees the waits it sees in the simulator.

Endpoints besides inference: ``GET /health``, ``GET /v1/models``, ``GET /metrics`` (Prometheus),
``GET /cluster``, ``GET /energy``, and ``/admin/*`` behind ``Authorization: Bearer <token>`` (disabled when
no token is set). Inference takes ``Authorization: Bearer <api key>`` when an API key is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.live import trace
from voltana_cli.core.live.config import ClusterSpec, InstanceSpec
from voltana_cli.core.live.engine import BadRequest, bad_requests, error_response, parse_request, read_json
from voltana_cli.core.live.upstream import Upstream, UpstreamError
from voltana_cli.core.models import ModelPredictor, PerfModel, engine_spec, gpu_spec, model_spec
from voltana_cli.core.policy import REGISTRY, InstanceView, Policy, PolicyContext, StaticController

#: Seconds between health probes of an unhealthy backend (a healthy one is probed every HEALTH_PERIOD_S).
HEALTH_PERIOD_S = 2.0
#: Per-request upstream timeout (s): connecting, and between two chunks of a streamed answer.
UPSTREAM_TIMEOUT_S = 600.0
#: In-flight requests beyond which new ones get 503.
DEFAULT_MAX_INFLIGHT = 4096
#: The pending requests' waits ``GET /cluster`` lists per prefill instance (the oldest ones): enough for the
#: batches a controller plans over, and a bounded reply however long the queue.
WAITS_REPORTED = 256
_INFER = {"/generate": "generate", "/v1/completions": "completions", "/v1/chat/completions": "chat"}


@dataclass
class Backend:
    """One instance as the router knows it."""

    spec: InstanceSpec
    index: int
    view: InstanceView
    healthy: bool = True
    failures: int = 0
    clock_mhz: int | None = None
    routed: int = 0
    # A prefill instance's requests that have not had its answer yet (bootstrap room -> when routed), oldest
    # first, and the TTFT of its latest request to stream a first token: what its controller would see of its
    # queue in the simulator (``/cluster``; the forward-pass stream counts requests but gives no ages).
    pending: dict[int, float] = field(default_factory=dict)
    recent_ttft_s: float = 0.0

    @property
    def url(self) -> str:
        return self.spec.url

    def waits(self, now: float) -> list[float]:
        """How long each pending request has waited, oldest first (at most ``WAITS_REPORTED``)."""
        return [round(now - t, 6) for t in itertools.islice(self.pending.values(), WAITS_REPORTED)]

    @property
    def role(self) -> str:
        return self.spec.role


@dataclass
class RouterStats:
    """Counters the router's ``/metrics`` reports (besides its latency histograms)."""

    inflight: int = 0
    started_s: float = field(default_factory=time.monotonic)


class Router:
    """The router's state and request handling (the aiohttp app is ``make_router_app``).

    Args:
        spec: the cluster.
        policy: the policy name whose routers place requests (its controllers run in the sidecars).
        admin_token: bearer token of ``/admin/*`` (``None``: admin disabled).
        api_key: bearer token of the inference endpoints (``None``: open).
        max_inflight: in-flight requests beyond which new ones are refused (503).
    """

    def __init__(self, spec: ClusterSpec, policy: str | None = None, admin_token: str | None = None,
                 api_key: str | None = None, max_inflight: int = DEFAULT_MAX_INFLIGHT):
        self.spec = spec
        self.admin_token, self.api_key = admin_token, api_key
        self.max_inflight = max_inflight
        self.pm = PerfModel(gpu_spec(spec.gpu), model_spec(spec.model), engine_spec(),
                            tp=spec.instances[0].tp)
        self.prefills = [Backend(s, i, InstanceView(i, 0, 0, self.pm.clocks[-1])) for i, s in
                         enumerate(spec.of_role("prefill"))]
        self.decodes = [Backend(s, i, InstanceView(i, 0, 0, self.pm.clocks[-1])) for i, s in
                        enumerate(spec.of_role("decode"))]
        self.stats = RouterStats()
        self._context = live_context(self.pm, spec.slo_ttft_ms, spec.slo_itl_ms, spec.tuned)
        self.policy_name = ""
        self.policy: Policy | None = None
        self.set_policy(policy or spec.policy)
        self.session: Any = None  # aiohttp's client: probes, state and admin calls
        self.upstream = Upstream(read_timeout_s=UPSTREAM_TIMEOUT_S)  # the inference path's client
        self.metrics = _RouterMetrics()
        # Set where the cluster has controller sidecars (``voltana serve``): applies a policy's controllers by
        # restarting them with it; returns what failed. Without it only static policies apply (clocks pinned
        # through each instance's clock setter).
        self.on_policy: Callable[[str], Awaitable[list[str]]] | None = None

    # ---- policy ----------------------------------------------------------------------------------------
    def context(self) -> PolicyContext:
        return self._context

    def set_policy(self, name: str) -> Policy:
        """Place requests with policy ``name``'s routers from now on; a name the live world cannot run is a
        ``UserError`` (a yardstick reads a truth no live cluster has; a searched policy is found in the
        simulator)."""
        entry = REGISTRY.entry(name)
        if entry.yardstick:
            raise UserError(f"{name} is a yardstick that reads the simulator's ground truth: a live cluster cannot "
                            "run it", field="policy")
        if REGISTRY.searched(name):
            raise UserError(f"{name} is found by a search in the simulator: run `voltana bench --policy {name}` to "
                            "find its clocks, then give them as static:<prefill>/<decode>", field="policy")
        if entry.layout != "pd":
            raise UserError(f"{name} runs on the {entry.layout} layout; this cluster is P/D", field="policy")
        self.policy = REGISTRY.build(name, self.context())
        self.policy_name = name
        return self.policy

    def static_clocks(self) -> tuple[int, int] | None:
        """The (prefill, decode) clocks a static policy pins, else ``None``."""
        if self.policy is None:
            return None
        pre, dec = self.policy.make_prefill_controller(), self.policy.make_decode_controller()
        if isinstance(pre, StaticController) and isinstance(dec, StaticController):
            return pre.clock_mhz, dec.clock_mhz
        return None

    # ---- placement -------------------------------------------------------------------------------------
    def choose(self, n_in: int) -> tuple[Backend, Backend]:
        """A healthy (prefill, decode) pair for a request of ``n_in`` prompt tokens."""
        assert self.policy is not None
        pre = [b for b in self.prefills if b.healthy]
        dec = [b for b in self.decodes if b.healthy]
        if not pre or not dec:
            raise NoBackend("no healthy " + ("prefill" if not pre else "decode") + " instance: retry later")
        p = pre[_pick(self.policy.prefill_router, n_in, pre)]
        d = dec[_pick(self.policy.decode_router, n_in, dec)]
        return p, d

    def admit(self, p: Backend, d: Backend, n_in: int, n_out: int, room: int | None = None,
              now: float | None = None) -> None:
        """Count a request placed on ``p`` and ``d`` (``room``: its bootstrap room, which keeps its wait on ``p``
        until ``prefill_done``; ``now``: when, by ``time.monotonic``)."""
        if room is not None:
            p.pending[room] = time.monotonic() if now is None else now
        p.view.num_requests += 1
        p.view.queued_tokens += n_in
        d.view.num_requests += 1
        d.view.queued_tokens += n_in + n_out
        d.view.kv_tokens += n_in
        p.routed += 1
        d.routed += 1

    @staticmethod
    def prefill_done(p: Backend, n_in: int, room: int | None = None) -> None:
        if room is not None:
            p.pending.pop(room, None)
        p.view.num_requests -= 1
        p.view.queued_tokens -= n_in

    @staticmethod
    def decode_done(d: Backend, n_in: int, n_out: int) -> None:
        d.view.num_requests -= 1
        d.view.queued_tokens -= n_in + n_out
        d.view.kv_tokens -= n_in

    def backends(self) -> list[Backend]:
        return [*self.prefills, *self.decodes]

    async def instance_states(self) -> dict[str, dict[str, Any] | None]:
        """Each instance's ``/_voltana/state`` by URL (``None`` where it does not answer); notes each clock."""
        import aiohttp

        async def one(b: Backend) -> tuple[str, dict[str, Any] | None]:
            try:
                async with self.session.get(f"{b.url}/_voltana/state", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        st = await r.json()
                        b.clock_mhz = st.get("clock_mhz")
                        return b.url, st
            except (TimeoutError, aiohttp.ClientError):
                pass
            return b.url, None

        return dict(await asyncio.gather(*(one(b) for b in self.backends())))

    async def pin_clocks(self, clocks: tuple[int, int]) -> list[str]:
        """Set (prefill, decode) clocks through each instance's clock setter; what failed."""
        import aiohttp

        failed = []
        for b in self.backends():
            c = clocks[0] if b.role == "prefill" else clocks[1]
            try:
                async with self.session.post(f"{b.url}/_voltana/clock", json={"clock_mhz": c},
                                             timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status != 200:
                        failed.append(f"{b.url}: HTTP {r.status}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                failed.append(f"{b.url}: {exc.__class__.__name__}")
        return failed

    async def session_and_probe(self, app: Any) -> Any:
        """aiohttp cleanup context: the upstream session, and a health probe of every backend every
        ``HEALTH_PERIOD_S`` (an unhealthy one is routed around until it answers again)."""
        import aiohttp

        async def loop() -> None:
            while True:
                for b in self.backends():
                    try:
                        async with self.session.get(f"{b.url}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                            b.healthy = r.status == 200
                    except (TimeoutError, aiohttp.ClientError):
                        b.healthy = False
                await asyncio.sleep(HEALTH_PERIOD_S)

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        task = asyncio.ensure_future(loop())
        yield
        task.cancel()
        await self.session.close()
        self.upstream.close()

    def mark_failed(self, b: Backend) -> None:
        b.failures += 1
        b.healthy = False


def live_context(pm: PerfModel, slo_ttft_ms: float, slo_itl_ms: float, tuned: str | Path | None = None) -> PolicyContext:
    """The policy context of the live world: the router's and the sidecars' policies predict with the
    performance model of the cluster's GPU and model (exact: no drawn error), or with the EcoPred of the tuned
    config ``tuned``, whose knobs ``voltana-tuned`` runs. Prefill instances are picked round-robin, or with
    the router the tuned config was tuned and validated with (its knobs read the per-instance arrival rates
    and queues that routing makes)."""
    clocks = list(pm.clocks)
    predictor: Any = ModelPredictor(pm, 0.0, random_generator(0), clocks)
    knobs = None
    prefill_router = "round-robin"
    if tuned is not None:
        from voltana_cli.core.tune import load_tuned

        tc = load_tuned(tuned)
        gpu, model = tc.provenance.get("gpu"), tc.provenance.get("model")
        if (gpu, model) != (pm.gpu.name, pm.model.name) and gpu is not None:
            raise UserError(f"{tuned} is for {gpu} x {model}, but the cluster is {pm.gpu.name} x {pm.model.name}: "
                            "tune for this pair, or give a matching --tuned", field="tuned")
        if tc.policy is None:
            raise UserError(f"{tuned} has no policy section (a --fit-only predictor): write a tuned config with "
                            "`voltana tune`", field="tuned")
        knobs = tc.policy
        predictor = tc.predictor or predictor
        prefill_router = tc.prefill_router
    return PolicyContext(tuple(clocks), tuple(pm.gpu.ecofreq_levels_mhz), slo_ttft_ms / 1e3, slo_itl_ms / 1e3,
                         predictor, pm.engine.gemm_tile, prefill_router=prefill_router, tuned=knobs)


class NoBackend(Exception):
    """No healthy instance of a role (HTTP 503)."""


def random_generator(seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed)


def _pick(router: Any, n_in: int, backends: list[Backend]) -> int:
    """Run a pure router over the healthy backends' views (re-indexed 0..n-1 for the call)."""
    views = [b.view for b in backends]
    saved = [v.index for v in views]
    for i, v in enumerate(views):
        v.index = i
    try:
        return int(router.choose(n_in, views))
    finally:
        for v, i in zip(views, saved, strict=True):
            v.index = i


class _RouterMetrics:
    """The router's Prometheus registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = reg = CollectorRegistry()
        self.requests = Counter("voltana_router_requests", "requests by endpoint and status", ["endpoint", "status"],
                                registry=reg)
        self.decisions = Counter("voltana_router_decisions", "requests placed per instance", ["role", "url"],
                                 registry=reg)
        buckets = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.8, 1, 2, 5, 10, 30)
        self.ttft = Histogram("voltana_router_ttft_seconds", "time to the first streamed chunk", registry=reg,
                              buckets=buckets)
        self.itl = Histogram("voltana_router_chunk_gap_seconds", "time between streamed chunks", registry=reg,
                             buckets=buckets)
        self.inflight = Gauge("voltana_router_inflight_requests", "requests in flight", registry=reg)
        self.queue = Gauge("voltana_instance_queued_requests", "requests the router has in flight to the instance",
                           ["role", "url"], registry=reg)
        self.clock = Gauge("voltana_instance_clock_mhz", "SM clock of the instance (MHz)", ["role", "url"],
                           registry=reg)
        self.power = Gauge("voltana_instance_power_watts", "mean power of the instance since the last scrape (W)",
                           ["role", "url"], registry=reg)
        self.energy = Gauge("voltana_instance_energy_joules", "energy of the instance since it started (J)",
                            ["role", "url"], registry=reg)
        self.healthy = Gauge("voltana_instance_healthy", "1 when the instance answers its health probe",
                             ["role", "url"], registry=reg)
        self._last: dict[str, tuple[float, float]] = {}
        self._counts: dict[tuple[str, str], Any] = {}  # labelled children, looked up once (per-request path)
        self._decided: dict[str, Any] = {}

    def count(self, path: str, status: str) -> None:
        child = self._counts.get((path, status))
        if child is None:
            child = self._counts[(path, status)] = self.requests.labels(path, status)
        child.inc()

    def decided(self, b: Backend) -> None:
        child = self._decided.get(b.url)
        if child is None:
            child = self._decided[b.url] = self.decisions.labels(b.role, b.url)
        child.inc()

    def observe_instances(self, router: Router, states: dict[str, dict[str, Any] | None]) -> None:
        now = time.monotonic()
        for b in router.backends():
            labels = {"role": b.role, "url": b.url}
            self.queue.labels(**labels).set(b.view.num_requests)
            self.healthy.labels(**labels).set(1 if b.healthy else 0)
            st = states.get(b.url)
            if not st:
                continue
            self.clock.labels(**labels).set(st.get("clock_mhz", 0))
            e = float(st.get("total_j", 0.0))
            self.energy.labels(**labels).set(e)
            last = self._last.get(b.url)
            if last is not None and now > last[0]:
                self.power.labels(**labels).set(max(0.0, (e - last[1]) / (now - last[0])))
            self._last[b.url] = (now, e)


def _bearer(request: Any) -> str | None:
    h = request.headers.get("Authorization", "")
    return h[7:].strip() if h.startswith("Bearer ") else None


def _allowed(given: str | None, want: str | None) -> bool:
    return want is None or (given is not None and hmac.compare_digest(given.encode(), want.encode()))


def make_router_app(router: Router) -> Any:
    """The router's aiohttp application: status, admin and inference routes, and the health probe."""
    from aiohttp import web

    routes = web.RouteTableDef()
    _status_routes(router, routes)
    _admin_routes(router, routes)
    _inference_routes(router, routes)
    app = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[bad_requests()])
    app.add_routes(routes)
    app.cleanup_ctx.append(router.session_and_probe)
    return app


def _status_routes(router: Router, routes: Any) -> None:
    """``/health``, ``/v1/models``, ``/cluster``, ``/energy`` and ``/metrics``."""
    from aiohttp import web

    @routes.get("/health")
    async def health(request: web.Request) -> web.Response:
        ok = any(b.healthy for b in router.prefills) and any(b.healthy for b in router.decodes)
        return web.json_response({"status": "ok" if ok else "degraded"}, status=200 if ok else 503)

    @routes.get("/v1/models")
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": router.spec.model, "object": "model",
                                                              "created": 0, "owned_by": "voltana"}]})

    @routes.get("/cluster")
    async def cluster(request: web.Request) -> web.Response:
        st = await router.instance_states()
        now = time.monotonic()
        return web.json_response({
            "policy": router.policy_name, "model": router.spec.model, "gpu": router.spec.gpu,
            "slo_ttft_ms": router.spec.slo_ttft_ms, "slo_itl_ms": router.spec.slo_itl_ms,
            "instances": [{"role": b.role, "url": b.url, "bootstrap_port": b.spec.bootstrap_port,
                           "clock_mhz": (st.get(b.url) or {}).get("clock_mhz"), "healthy": b.healthy,
                           "in_flight": b.view.num_requests, "routed": b.routed,
                           **({"pending": len(b.pending), "waits_s": b.waits(now),
                               "recent_ttft_s": round(b.recent_ttft_s, 6)} if b.role == "prefill" else {})}
                          for b in router.backends()]})

    @routes.get("/energy")
    async def energy(request: web.Request) -> web.Response:
        st = await router.instance_states()
        inst = [{"url": b.url, "role": b.role,
                 "energy_j": (st.get(b.url) or {}).get("total_j"),
                 "busy_j": (st.get(b.url) or {}).get("busy_j"), "idle_j": (st.get(b.url) or {}).get("idle_j")}
                for b in router.backends()]
        known = [x["energy_j"] for x in inst if x["energy_j"] is not None]
        return web.json_response({"total_j": sum(known) if len(known) == len(inst) else None, "instances": inst,
                                  "time_s": time.monotonic() - router.stats.started_s})

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        from prometheus_client import generate_latest

        router.metrics.observe_instances(router, await router.instance_states())
        router.metrics.inflight.set(router.stats.inflight)
        return web.Response(body=generate_latest(router.metrics.registry), content_type="text/plain",
                            charset="utf-8")


def _admin_routes(router: Router, routes: Any) -> None:
    """``/admin/policy`` behind the admin token."""
    from aiohttp import web

    def denied(request: web.Request) -> web.Response | None:
        if router.admin_token is None:
            return error_response(403, "the admin API is disabled: start voltana serve with --admin-token "
                                  "(or VOLTANA_ADMIN_TOKEN)", "permission_error")
        if not _allowed(_bearer(request), router.admin_token):
            return error_response(401, "wrong or missing admin token: send 'Authorization: Bearer <token>'",
                                  "authentication_error")
        return None

    @routes.post("/admin/policy")
    async def admin_policy(request: web.Request) -> web.Response:
        refused = denied(request)
        if refused is not None:
            return refused
        body = await read_json(request)
        name = body.get("policy") if isinstance(body, dict) else None
        if not isinstance(name, str):
            return error_response(400, "give {\"policy\": \"<name>\"}, e.g. static-max or static:1200/990")
        previous = router.policy_name
        try:
            router.set_policy(name)
        except UserError as exc:
            return error_response(400, exc.problem)
        if router.on_policy is not None:  # the sidecars run the policy's controllers
            failed = await router.on_policy(name)
            if failed:
                return error_response(502, f"the controllers did not start: {'; '.join(failed)}", "backend_error")
            return web.json_response({"policy": router.policy_name})
        clocks = router.static_clocks()
        if clocks is None:
            router.set_policy(previous)
            return error_response(409, f"{name} sets clocks per iteration: it needs the per-instance controller "
                                  "sidecars, which a router started with --router-only does not run; use static-max, "
                                  "static-min or static:<prefill>/<decode>, or start the instances with voltana serve",
                                  "unsupported")
        failed = await router.pin_clocks(clocks)
        if failed:
            return error_response(502, f"could not set the clock on {'; '.join(failed)}", "backend_error")
        return web.json_response({"policy": router.policy_name, "prefill_clock_mhz": clocks[0],
                                  "decode_clock_mhz": clocks[1]})


def _inference_routes(router: Router, routes: Any) -> None:
    """``/generate``, ``/v1/completions`` and ``/v1/chat/completions``: the P/D proxy."""
    from aiohttp import web

    max_context = router.pm.model.max_context_tokens

    def refuse(path: str, status: int, message: str, kind: str) -> web.Response:
        router.metrics.count(path, str(status))
        return error_response(status, message, kind)

    async def infer(request: web.Request) -> web.StreamResponse:
        path = request.path
        kind = _INFER[path]
        if not _allowed(_bearer(request), router.api_key):
            return refuse(path, 401, "wrong or missing API key: send 'Authorization: Bearer <key>'",
                                "authentication_error")
        try:
            body = await read_json(request)
            req = parse_request(kind, body, max_context)
        except BadRequest as exc:
            return refuse(path, 400, str(exc), "invalid_request_error")
        if router.stats.inflight >= router.max_inflight:
            return refuse(path, 503, f"{router.max_inflight} requests are in flight: retry later", "overloaded")
        try:
            p, d = router.choose(req.input_tokens)
        except NoBackend as exc:
            return refuse(path, 503, str(exc), "unavailable")
        room = random.getrandbits(63)
        trace.event("router_received", room)
        # Serialised once for both instances.
        fwd = json.dumps({**body, "bootstrap_host": p.spec.host, "bootstrap_port": p.spec.bootstrap_port,
                          "bootstrap_room": room}).encode()
        router.admit(p, d, req.input_tokens, req.output_tokens, room)
        router.metrics.decided(p)
        router.metrics.decided(d)
        return await _Proxied(router, path, req, p, d, fwd, room).relay(request)

    for path in _INFER:
        routes.post(path)(infer)


class _Proxied:
    """One request's trip through its P/D pair: the prefill post runs in the background, the decode's answer is
    relayed to the client as it comes; a prefill that fails before the KV cache is handed over ends the decode
    half with a 502 naming it (the decode would wait for a KV cache that never comes)."""

    def __init__(self, router: Router, path: str, req: Any, p: Backend, d: Backend, fwd: bytes, room: int):
        self.router, self.path, self.req, self.p, self.d, self.fwd, self.room = router, path, req, p, d, fwd, room
        self.handler = asyncio.current_task()
        self.prefill_failed = False
        self.first_token = False  # once the decode streams, its KV was handed over: a prefill failure no longer matters
        self.status = "200"
        self.resp: Any = None  # the client's stream, once it has begun
        self.t0 = time.monotonic()

    async def to_prefill(self) -> None:
        ok = False
        p = self.p
        try:
            async with await self.router.upstream.post(p.spec.host, p.spec.port, self.path, self.fwd) as r:
                await r.read()
                ok = r.status < 500
        except UpstreamError:
            pass
        finally:
            self.router.prefill_done(p, self.req.input_tokens, self.room)
        if not ok:
            # End the decode half now (closing the decode request aborts it there).
            self.router.mark_failed(p)
            if not self.first_token and self.handler is not None and not self.handler.done():
                self.prefill_failed = True
                self.handler.cancel()

    async def relay(self, request: Any) -> Any:
        """The decode's answer to the client, or a JSON (or SSE) error; books the request whatever happens."""
        router = self.router
        router.stats.inflight += 1
        pre_task = asyncio.ensure_future(self.to_prefill())
        try:
            return await self._decode(request, pre_task)
        except asyncio.CancelledError:
            if not self.prefill_failed:  # the client left
                self.status = "499"
                pre_task.cancel()
                raise
            if self.handler is not None:
                self.handler.uncancel()  # cancelled by ``to_prefill``: answer instead
            return await self._fail(f"prefill instance {self.p.url} failed before this request's KV cache was handed "
                                    "over")
        except UpstreamError as exc:
            router.mark_failed(self.d)
            return await self._fail(f"decode instance {self.d.url} failed: {exc}")
        finally:
            router.stats.inflight -= 1
            router.decode_done(self.d, self.req.input_tokens, self.req.output_tokens)
            router.metrics.count(self.path, self.status)
            if self.status not in ("200", "499") and not pre_task.done():
                pre_task.cancel()  # the decode side failed: the prefill's answer is not needed

    async def _decode(self, request: Any, pre_task: asyncio.Future[None]) -> Any:
        from aiohttp import web

        router, d = self.router, self.d
        async with await router.upstream.post(d.spec.host, d.spec.port, self.path, self.fwd) as up:
            if up.status != 200 or not self.req.stream:
                data = await up.read()
                self.status = str(up.status)
                if up.status >= 500:
                    router.mark_failed(d)
                return web.Response(body=data, status=up.status, content_type="application/json")
            self.resp = resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                           "Cache-Control": "no-cache"})
            await resp.prepare(request)
            last = None
            async for chunk in up.chunks():
                now = time.monotonic()
                if last is None:
                    trace.event("router_first_token", self.room)
                    self.first_token = True
                    router.metrics.ttft.observe(now - self.t0)
                    self.p.recent_ttft_s = now - self.t0
                else:
                    router.metrics.itl.observe(now - last)
                last = now
                try:
                    await resp.write(chunk)
                except ConnectionError:  # the client left: leaving this block closes both upstream requests
                    self.status = "499"
                    pre_task.cancel()
                    return resp
            with contextlib.suppress(ConnectionError):  # a client that closed once it had every token lost nothing
                await resp.write_eof()
            return resp

    async def _fail(self, message: str) -> Any:
        self.status = "502"
        if self.resp is not None:  # the stream had begun: end it with an error event
            with contextlib.suppress(ConnectionError):
                await self.resp.write(_sse_error(message))
            return self.resp
        return error_response(502, message, "backend_error")


def _sse_error(message: str) -> bytes:
    """An SSE event that ends a stream with an error (the shape SGLang's servers send)."""
    return b"data: " + json.dumps({"error": {"message": message, "type": "backend_error", "code": 502}}).encode() + b"\n\n"


async def run_router(router: Router, host: str, port: int, ready: Any = None) -> None:
    """Serve the router on ``host:port`` until cancelled."""
    from aiohttp import web

    # Handlers are cancelled when their client disconnects: a request whose client left is aborted upstream.
    runner = web.AppRunner(make_router_app(router), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}: choose another --port or stop "
                        "what holds it", field="port") from None
    if ready:
        ready()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
