"""The controller sidecar: one process per instance that reads the instance's per-iteration state, runs the
pure controller, and sets the clocks of all the instance's GPUs through the GPU access layer.

State comes from SGLang's forward-pass metrics stream (``forward_pass``; the emulated engine publishes the
same messages), one message per iteration: the sidecar decides after each iteration for the ones that
follow, on the shape of the iteration that just ran (the instance has already formed the next one when the
message arrives: the decision lags one iteration; VoltanaLLM's own controller polls alike). A clock is
lowered only after ``min_dwell_s`` at the current one (raising is immediate), so it does not flap; after
the controller's idle timeout without an iteration it drops to the controller's idle clock.

Clocks go through ``ClockGuard`` with a ``LockStore``: a second sidecar for a GPU that a live one holds is
refused with the holder's pid; every exit path resets the clocks; and when the sidecar dies by ``kill -9``,
``voltana serve`` (its supervisor) finds the record of a dead owner and resets them
(``recover_clocks``). GPUs: NVML on a real card (root, or the record says why not); an emulated instance's
clock setter over HTTP (``EngineGpu``) otherwise.

The forward-pass stream says what an instance runs, not what arrives at it or how long it has waited; the
router knows both (``RouterState``: ``GET /cluster``, polled twice a second). The arrival rate a controller's
overload rule reads is the requests the router sends to the instance, smoothed as the simulator smooths it;
a prefill controller's waits (its batch's oldest, the queue's oldest) and its latest TTFT are the router's
for that instance, as they were at the poll plus the time since.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import ClockGuard, GpuDevice, LockStore, default_lock_dir
from voltana_cli.core.policy import Observation
from voltana_cli.core.policy.controller import RATE_TAU_S, WeightedMean

#: Lowering the clock waits this long at the current one (raising is immediate).
DEFAULT_MIN_DWELL_S = 0.05


class EngineGpu:
    """The GPU of an emulated instance: its clock setter is the engine's ``/_voltana/clock``.

    Args:
        url: the emulated instance.
        clocks: its supported clocks, ascending.
        default_mhz: the clock a reset returns to (an unlocked GPU boosts: the top clock).
    """

    def __init__(self, url: str, clocks: list[int], default_mhz: int, name: str = "emulated GPU"):
        self.url = url.rstrip("/")
        self.uid = f"emulated:{self.url}"
        self.name = f"{name} of {self.url}"
        self._clocks = clocks
        self._default = default_mhz

    def _post(self, mhz: int) -> None:
        req = urllib.request.Request(f"{self.url}/_voltana/clock", data=json.dumps({"clock_mhz": mhz}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeError(f"{self.url} did not take the clock: {exc}") from None

    def _state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_voltana/state", timeout=5) as r:
            return dict(json.loads(r.read()))

    def supported_clocks_mhz(self) -> list[int]:
        return list(self._clocks)

    def sm_clock_mhz(self) -> int:
        return int(self._state()["clock_mhz"])

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None:
        self._post(max_mhz)

    def reset_clocks(self) -> None:
        self._post(self._default)

    def energy_j(self) -> float | None:
        try:
            return float(self._state()["total_j"])
        except (urllib.error.URLError, OSError, KeyError):
            return None

    def power_w(self) -> float | None:
        return None

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "uid": self.uid, "emulated": True}


class RouterState:
    """What the router knows of one instance that its forward-pass stream does not say (``GET /cluster``).

    - ``rate_rps``: the arrival rate as the router counts it (``routed``): ``sample(routed, t)`` folds in a
      reading, the requests routed since the last one over the time between, smoothed with the simulator's
      time constant (``RATE_TAU_S``), so a controller tuned in the simulator reads the same estimate live.
    - ``waits_s``: a prefill instance's requests that have not had its answer yet, how long each had waited
      at the poll, oldest first (the router lists the oldest few hundred); ``waits_at(t)`` ages them to
      ``t``; ``pending``: how many there are in all.
    - ``recent_ttft_s``: the TTFT of the prefill instance's latest request to stream its first token.

    ``start()`` polls in a daemon thread; a router that does not answer leaves everything as it was.

    Args:
        router_url: the router's base URL.
        instance_url: the instance's URL as the router knows it.
        period_s: the polling period.
        fetch: returns the parsed ``/cluster`` document (tests pass their own).
    """

    def __init__(self, router_url: str, instance_url: str, period_s: float = 0.5,
                 fetch: Callable[[], dict[str, Any]] | None = None):
        self.router_url, self.instance_url, self.period_s = router_url.rstrip("/"), instance_url, period_s
        self.fetch = fetch or self._fetch
        self.rate_rps = 0.0
        self.waits_s: list[float] = []
        self.pending = 0
        self.recent_ttft_s = 0.0
        self._polled_at = 0.0
        self._mean = WeightedMean(RATE_TAU_S)  # from the first reading, as the simulator's from its start
        self._last: tuple[int, float] | None = None

    def _fetch(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.router_url}/cluster", timeout=2) as r:
            return dict(json.loads(r.read()))

    def sample(self, routed: int, t: float) -> float:
        last, self._last = self._last, (routed, t)
        if last is not None and t > last[1]:
            self.rate_rps = self._mean.add(max(routed - last[0], 0) / (t - last[1]), t - last[1])
        return self.rate_rps

    def waits_at(self, t: float) -> list[float]:
        """The pending requests' waits at the last poll, aged to ``t``, oldest first."""
        dt = max(t - self._polled_at, 0.0)
        return [w + dt for w in self.waits_s]

    def poll(self, t: float) -> None:
        try:
            doc = self.fetch()
        except (urllib.error.URLError, OSError, ValueError):
            return
        instances = doc.get("instances") if isinstance(doc, dict) else None
        for inst in instances if isinstance(instances, list) else []:
            if isinstance(inst, dict) and inst.get("url") == self.instance_url and isinstance(inst.get("routed"), int):
                self.sample(inst["routed"], t)
                waits, ttft, pending = inst.get("waits_s"), inst.get("recent_ttft_s"), inst.get("pending")
                if isinstance(waits, list) and all(isinstance(w, (int, float)) for w in waits):
                    self.waits_s, self._polled_at = [float(w) for w in waits], t
                    self.pending = pending if isinstance(pending, int) and pending >= len(waits) else len(waits)
                if isinstance(ttft, (int, float)) and math.isfinite(ttft):
                    self.recent_ttft_s = float(ttft)
                return

    def start(self) -> threading.Thread:
        def loop() -> None:
            while True:
                self.poll(time.monotonic())
                time.sleep(self.period_s)

        th = threading.Thread(target=loop, name="router-state", daemon=True)
        th.start()
        return th


def observation(msg: dict[str, Any], role: str, now: float, clock: int, rate_rps: float = 0.0,
                waits_s: list[float] | None = None, recent_ttft_s: float = 0.0,
                pending: int | None = None) -> Observation:
    """What the controller sees after one forward-pass message: the iteration that ran is the estimate of the
    next one (its shape), and its duration and clock are the feedback. A prefill instance's waits come from
    the router (``RouterState``: its ``pending`` requests not answered yet, the waits of the oldest of them
    listed first): the batch's oldest wait is the oldest of them, the queue's is the oldest of the youngest
    as many as the message says are queued (past the list's end, the last listed wait: an upper bound)."""
    s, q = msg.get("scheduled_requests") or {}, msg.get("queued_requests") or {}
    wall = float(msg.get("wall_time") or 0.0)
    oldest = queued_oldest = ttft = 0.0
    if role == "prefill":
        batch, tokens = int(s.get("num_prefill_requests", 0)), int(s.get("sum_prefill_tokens", 0))
        queued, queued_tokens = int(q.get("num_prefill_requests", 0)), int(q.get("sum_prefill_tokens", 0))
        waits, ttft = waits_s or [], recent_ttft_s
        oldest = waits[0] if waits else 0.0
        total = len(waits) if pending is None else max(pending, len(waits))
        if waits and 0 < queued <= total:
            queued_oldest = waits[min(total - queued, len(waits) - 1)]
    else:
        batch, tokens = int(s.get("num_decode_requests", 0)), int(s.get("sum_decode_kv_tokens", 0))
        queued, queued_tokens = int(q.get("num_decode_requests", 0)), 0
    return Observation(now, batch, tokens, queued, oldest, rate_rps, wall, clock, batch, tokens, ttft, queued_tokens,
                       queued_oldest)


def run(reader: Any, role: str, controller: Any, guard: ClockGuard, min_dwell_s: float = DEFAULT_MIN_DWELL_S,
        now: Any = time.monotonic, until: Any = None, router: RouterState | None = None) -> int:
    """The sidecar loop: per message, decide and set; returns how many clock changes it made.

    ``until()``: stop when true (``None``: run until the process is stopped). ``router``: what the router knows
    of the instance (``None``: an arrival rate of 0, so an overload rule never fires, and no waits)."""
    current = controller.idle_clock_mhz
    guard.set(current)
    changed_at, last_msg, changes = now(), now(), 0
    while until is None or not until():
        msg = reader.read(0.5)
        t = now()
        if msg is None:
            if t - last_msg > controller.idle_timeout_s and current != controller.idle_clock_mhz:
                controller.on_idle_timeout()
                current = controller.idle_clock_mhz
                guard.set(current)
                changes += 1
            continue
        last_msg = t
        if not msg.get("scheduled_requests") or not msg.get("wall_time"):
            continue  # an idle heartbeat
        if router is None:
            obs = observation(msg, role, t, current)
        else:
            obs = observation(msg, role, t, current, router.rate_rps, router.waits_at(t), router.recent_ttft_s,
                              router.pending)
        want = int(controller.decide(obs))
        if want == current or (want < current and t - changed_at < min_dwell_s):
            continue
        guard.set(want)
        current, changed_at = want, t
        changes += 1
    return changes


def recover_clocks(gpus: list[GpuDevice], store: LockStore) -> list[str]:
    """Reset the clocks a dead sidecar left locked (what its ``ClockGuard`` would have done); returns what was
    reset. A GPU that a live sidecar holds is left alone."""
    guard = ClockGuard(gpus, lock=False, store=store)
    try:
        guard._take_over()
    except UserError:
        return []
    return guard.notices


def instance_gpus(spec: Any, inst: Any) -> list[GpuDevice]:
    """The GPUs whose clocks an instance's sidecar sets: NVML cards under SGLang, the emulated GPU otherwise."""
    if spec.engine == "sglang":
        return real_gpus(inst.gpu_ids, spec.gpu_access, spec.zeusd_socket)
    from voltana_cli.core.models import PerfModel, engine_spec, gpu_spec, model_spec

    clocks = list(PerfModel(gpu_spec(spec.gpu), model_spec(spec.model), engine_spec(), tp=inst.tp).clocks)
    return [EngineGpu(inst.url, clocks, clocks[-1])]


def real_gpus(ids: list[int], access: str, zeusd_path: str | None = None) -> list[GpuDevice]:
    """An instance's real GPUs: clocks set through NVML (root), or through the Zeus daemon (no root; NVML reads)."""
    from voltana_cli.core.hardware import NvmlGpu, ZeusdGpu, zeusd_socket

    readers = [NvmlGpu(i) for i in ids]
    if access != "zeusd":
        return list(readers)
    path = zeusd_socket(zeusd_path)
    return [ZeusdGpu(i, r, path) for i, r in zip(ids, readers, strict=True)]


def clock_path(spec: Any) -> str:
    """How the cluster's clocks are set, said at start-up."""
    if spec.engine == "sim":
        return "the emulated GPUs' clock setters"
    if spec.gpu_access == "zeusd":
        return f"the Zeus daemon at {spec.zeusd_socket or '$ZEUSD_SOCK_PATH'} (no root needed)"
    return "NVML (needs root or CAP_SYS_ADMIN)"


def build_controller(role: str, policy: str, gpu: str, model: str, tp: int, slo_ttft_ms: float,
                     slo_itl_ms: float, tuned: str | None = None) -> tuple[Any, list[int]]:
    """The policy's controller for ``role`` (and the GPU's clocks), built from the registry."""
    from voltana_cli.core.live.router import live_context
    from voltana_cli.core.models import PerfModel, engine_spec, gpu_spec, model_spec
    from voltana_cli.core.policy import REGISTRY

    pm = PerfModel(gpu_spec(gpu), model_spec(model), engine_spec(), tp=tp)
    pol = REGISTRY.build(policy, live_context(pm, slo_ttft_ms, slo_itl_ms, tuned))
    ctl = pol.make_prefill_controller() if role == "prefill" else pol.make_decode_controller()
    return ctl, list(pm.clocks)


def main(argv: list[str] | None = None) -> int:
    """``python -m voltana_cli.core.live.run_sidecar``: the controller of one instance (``voltana serve`` starts one
    per instance)."""
    ap = argparse.ArgumentParser(prog="voltana-sidecar", description=main.__doc__)
    ap.add_argument("--role", required=True, choices=["prefill", "decode"])
    ap.add_argument("--ipc", required=True, help="The instance's forward-pass metrics IPC name.")
    ap.add_argument("--url", required=True, help="The instance's URL (the emulated GPU's clock setter).")
    ap.add_argument("--gpu-kind", choices=["emulated", "nvml", "zeusd"], default="emulated")
    ap.add_argument("--zeusd-socket", help="zeusd: the daemon's socket (default: $ZEUSD_SOCK_PATH).")
    ap.add_argument("--gpu-ids", default="", help="NVML: the instance's GPU indices, comma-separated.")
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--slo-ttft-ms", type=float, default=800.0)
    ap.add_argument("--slo-itl-ms", type=float, default=50.0)
    ap.add_argument("--min-dwell-s", type=float, default=DEFAULT_MIN_DWELL_S)
    ap.add_argument("--tuned", help="A tuned config from voltana tune (voltana-tuned's knobs and predictor).")
    ap.add_argument("--router-url", help="The router's URL: the instance's arrival rate comes from its /cluster.")
    a = ap.parse_args(argv)
    from voltana_cli.core.live.forward_pass import ForwardPassReader

    try:
        ctl, clocks = build_controller(a.role, a.policy, a.gpu, a.model, a.tp, a.slo_ttft_ms, a.slo_itl_ms, a.tuned)
        gpus: list[GpuDevice]
        if a.gpu_kind in ("nvml", "zeusd"):
            gpus = real_gpus([int(i) for i in a.gpu_ids.split(",") if i.strip()], a.gpu_kind, a.zeusd_socket)
        else:
            gpus = [EngineGpu(a.url, clocks, clocks[-1])]
        store = LockStore(default_lock_dir())
        reader = ForwardPassReader(a.ipc)
        with ClockGuard(gpus, store=store, on_notice=lambda m: print(f"note: {m}", file=sys.stderr)) as guard:
            how = {"nvml": "NVML", "zeusd": "the Zeus daemon", "emulated": "the emulated GPU"}[a.gpu_kind]
            print(f"sidecar {a.role} {a.url}: policy {a.policy}, clocks through {how}", flush=True)
            parent = os.getppid()
            # Ends (clocks reset on the way out) when its supervisor is gone, however it went, even by kill -9.
            router = RouterState(a.router_url, a.url) if a.router_url else None
            if router is not None:
                router.start()
            run(reader, a.role, ctl, guard, a.min_dwell_s, until=lambda: os.getppid() != parent, router=router)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except SystemExit as exc:  # SIGTERM inside the guard: clocks were reset on the way out
        return 0 if exc.code in (143, 0, None) else int(exc.code) if isinstance(exc.code, int) else 1
    return 0
