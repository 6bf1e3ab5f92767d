"""``voltana serve``: launch a P/D cluster (stock SGLang or emulated engines) behind voltana's router."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from voltana_cli.commands import user_errors
from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import LockStore, default_lock_dir
from voltana_cli.core.live import (
    ClusterSpec,
    InstanceSpec,
    Router,
    Supervisor,
    check_ports_free,
    check_sglang,
    clock_path,
    cluster_from_flags,
    installed_sglang,
    instance_gpus,
    load_cluster,
    plan,
    recover_clocks,
    run_router,
    sidecar_plan,
)
from voltana_cli.core.models import defaults

FLAGS = {"n_prefill": "--prefill", "n_decode": "--decode", "config": "--config"}
#: An instance process that exits is restarted, at most MAX_RESTARTS times per RESTART_WINDOW_S.
MAX_RESTARTS, RESTART_WINDOW_S = 3, 300.0


def serve(
    config: Path | None = typer.Option(None, "--config", help="Cluster YAML (instances, hosts, ports, GPUs, "
                                       "router, SLOs, engine); without it, the flags below build a one-machine "
                                       "cluster."),
    engine: str = typer.Option("sim", help="sglang: stock SGLang servers on the GPUs; sim: emulated engines "
                               "(no GPU) that answer like SGLang with the performance model's timing."),
    prefill: int = typer.Option(1, help="Prefill instances (without --config)."),
    decode: int = typer.Option(1, help="Decode instances (without --config)."),
    model: str = typer.Option(defaults().model, help="Model spec (without --config)."),
    gpu: str = typer.Option(defaults().gpu, help="GPU spec (without --config)."),
    tp: int = typer.Option(1, help="Tensor parallelism per instance (without --config)."),
    base_port: int = typer.Option(30000, help="Instance i listens on BASE_PORT + i (without --config)."),
    policy: str | None = typer.Option(None, help="The policy the cluster starts with (static-max, static-min, "
                                      "static:<prefill>/<decode>, +router); default: the config's, else static-max."),
    tuned: Path | None = typer.Option(None, help="A tuned config from `voltana tune`: the sidecars and the router "
                                      "run voltana-tuned with its knobs (and its predictor); the default policy then."),
    host: str = typer.Option("127.0.0.1", help="The router's address; anything but loopback needs --api-key."),
    port: int = typer.Option(8000, help="The router's port."),
    admin_token: str | None = typer.Option(None, envvar="VOLTANA_ADMIN_TOKEN", help="Bearer token of the admin API "
                                           "(/admin/*; env VOLTANA_ADMIN_TOKEN); without it admin is off."),
    api_key: str | None = typer.Option(None, envvar="VOLTANA_API_KEY", help="Bearer token the inference endpoints "
                                       "require (env VOLTANA_API_KEY); required when --host is not loopback."),
    node: str | None = typer.Option(None, help="Start only the instances of this host of the --config (the "
                                    "router runs where the config's router host is)."),
    router_only: bool = typer.Option(False, "--router-only", help="Start only the router, in front of instances "
                                     "that already run (started by `voltana serve --node` on their hosts, or by "
                                     "hand) at the config's URLs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the exact commands; start nothing."),
    ready_timeout_s: float = typer.Option(0.0, help="Seconds to wait for every instance's health (0: 60 for "
                                          "emulated engines, 1800 for SGLang, which loads weights)."),
) -> None:
    """Launch a P/D cluster behind voltana's router; runs in the foreground until SIGINT/SIGTERM."""
    console = Console(stderr=True, soft_wrap=True, highlight=False)  # one event, one line (logs are grepped)
    with user_errors(FLAGS):
        if config is not None:
            spec = load_cluster(config)
        else:
            spec = cluster_from_flags(engine, prefill, decode, model, gpu, tp, host, port, base_port,
                                      **({"policy": policy} if policy else {}))
        if config is not None and (host != "127.0.0.1" or port != 8000):
            spec = ClusterSpec.model_validate({**spec.model_dump(), "router": {"host": host, "port": port}})
        if tuned is not None:
            spec = ClusterSpec.model_validate({**spec.model_dump(), "tuned": tuned.resolve(),
                                               **({} if policy else {"policy": "voltana-tuned"})})
        if not _loopback(spec.router.host) and not api_key:
            raise UserError(f"the router would listen on {spec.router.host}, beyond this machine: give --api-key "
                            "(or VOLTANA_API_KEY) so that inference needs it", field="api_key")
        router = Router(spec, policy, admin_token, api_key)  # checks the policy before anything starts
        runs_router = router_only or node is None or node == spec.router.host
        if dry_run:
            ipc_dir = Path(tempfile.gettempdir()) / "voltana-serve-RUN"
            planned = [] if router_only else plan(spec, node, ipc_dir)
            sidecars = [] if router_only else sidecar_plan(spec, node, ipc_dir, router.policy_name)
            _print_plan(spec, [*planned, *sidecars], runs_router, router.policy_name)
            return
        if spec.engine == "sglang" and not router_only:
            check_sglang(installed_sglang())
        check_ports_free(spec, node, runs_router, instances=not router_only)
        run_dir = Path(tempfile.mkdtemp(prefix="voltana-serve-"))  # logs and the metrics streams' sockets
        cluster = _Cluster(spec, node, run_dir, console, with_sidecars=not router_only)
        try:
            cluster.start(router.policy_name, ready_timeout_s or (60.0 if spec.engine == "sim" else 1800.0))
            if runs_router:
                if cluster.with_sidecars:
                    router.on_policy = cluster.change_policy
                _event_loop_runner()(_run(router, spec, cluster, console))
            else:
                _wait(cluster)
        finally:
            cluster.stop()
            console.print("voltana serve: stopped; clocks reset")


class _Cluster:
    """This node's processes: the instances and their controller sidecars (started after the instances,
    stopped before them, so that clocks are reset while the instances still answer)."""

    def __init__(self, spec: ClusterSpec, node: str | None, run_dir: Path, console: Console, with_sidecars: bool):
        self.spec, self.node, self.run_dir, self.console = spec, node, run_dir, console
        self.with_sidecars = with_sidecars
        self.instances = Supervisor(run_dir)
        self.sidecars = Supervisor(run_dir)
        self.policy = ""
        self.store = LockStore(default_lock_dir())
        self._restarts: dict[str, list[float]] = {}
        # A policy change replaces the sidecars while the watcher thread checks for dead processes: one at a
        # time, or the watcher would take a sidecar stopped on purpose for a crash and start it again.
        self._lock = threading.Lock()

    def start(self, policy: str, timeout_s: float) -> None:
        if self.with_sidecars:
            self.instances.start(plan(self.spec, self.node, self.run_dir))
            self.instances.wait_healthy(timeout_s)
            self.policy = policy
            self.sidecars.start(sidecar_plan(self.spec, self.node, self.run_dir, policy))
        n = len(self.instances.plans)
        self.console.print(f"voltana serve: {n} {self.spec.engine} instance(s) ready, {len(self.sidecars.plans)} "
                           f"controller sidecar(s) setting clocks through {clock_path(self.spec)} "
                           f"(logs in {self.run_dir})")

    async def change_policy(self, policy: str) -> list[str]:
        """Restart the sidecars with ``policy`` (each resets its clocks on the way out); what failed to start."""
        loop = asyncio.get_running_loop()
        plans = sidecar_plan(self.spec, self.node, self.run_dir, policy)

        def replace() -> None:
            with self._lock:
                self.sidecars.replace(plans)

        await loop.run_in_executor(None, replace)
        self.policy = policy
        await asyncio.sleep(1.0)
        return [f"{n} exited with code {c}: {self.sidecars.log_tail(n)}" for n, c in self.sidecars.dead()]

    def _instance_of(self, sidecar: str) -> InstanceSpec:
        _, role, index = sidecar.split("-")
        return self.spec.of_role(role)[int(index)]

    def recover(self, sidecar: str) -> list[str]:
        """Reset the clocks a dead sidecar left locked (its lock records name it)."""
        return recover_clocks(instance_gpus(self.spec, self._instance_of(sidecar)), self.store)

    def check(self, now: float) -> bool:
        """Restart what died (a sidecar after its clocks are reset); ``False`` when something keeps dying."""
        if not self._lock.acquire(blocking=False):
            return True  # the sidecars are being replaced
        try:
            return self._check(now)
        finally:
            self._lock.release()

    def _check(self, now: float) -> bool:
        for sup, kind in ((self.instances, "instance"), (self.sidecars, "sidecar")):
            for name, code in sup.dead():
                recent = [t for t in self._restarts.get(name, []) if now - t < RESTART_WINDOW_S]
                if len(recent) >= MAX_RESTARTS:
                    self.console.print(f"voltana serve: {name} exited with code {code} {MAX_RESTARTS + 1} times "
                                       f"within {RESTART_WINDOW_S:g} s: {sup.log_tail(name)}; stopping")
                    return False
                if kind == "sidecar":
                    for note in self.recover(name):
                        self.console.print(f"voltana serve: {note}")
                self.console.print(f"voltana serve: {name} exited with code {code}; restarting it")
                self._restarts[name] = [*recent, now]
                sup.restart(name)
        return True

    def stop(self) -> None:
        with self._lock:  # after any check or replacement in flight
            self._stop()

    def _stop(self) -> None:
        self.sidecars.stop()
        for name in self.sidecars.plans:  # one killed past its grace period left its records: reset now
            for note in self.recover(name):
                self.console.print(f"voltana serve: {note}")
        self.instances.stop()


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """``uvloop.run`` where uvloop is installed (a faster event loop for the router), else ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _print_plan(spec: ClusterSpec, planned: list, runs_router: bool, policy: str) -> None:
    typer.echo(f"# voltana serve plan: {spec.model} on {spec.gpu}, engine {spec.engine}, "
               f"{len(spec.of_role('prefill'))}P{len(spec.of_role('decode'))}D, policy {policy}, clocks through "
               f"{clock_path(spec)}")
    for p in planned:
        typer.echo(f"# {p.name} (health: {p.health_url})")
        typer.echo(p.shell())
    if runs_router:
        typer.echo(f"# router: voltana's, in this process, on http://{spec.router.host}:{spec.router.port}")


async def _run(router: Router, spec: ClusterSpec, cluster: _Cluster, console: Console) -> None:
    """The router until SIGINT/SIGTERM (or until a process keeps dying); dead processes are restarted."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(run_router(router, spec.router.host, spec.router.port, ready=lambda: console.print(
        f"voltana serve: router on http://{spec.router.host}:{spec.router.port} (policy {router.policy_name})")))

    async def watch() -> None:
        # A dead instance's requests in flight got errors; the router routes around it until its health probe
        # passes again. A dead sidecar's clocks are reset from its lock records before it is restarted.
        while not stop.is_set():
            if not await loop.run_in_executor(None, cluster.check, loop.time()):
                stop.set()
            await asyncio.sleep(0.5)

    watcher = asyncio.ensure_future(watch())
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for t in (task, watcher, waiter):
        t.cancel()
    await asyncio.gather(task, watcher, waiter, return_exceptions=True)
    if task in done and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def _wait(cluster: _Cluster) -> None:
    """This node runs instances only: until a signal, or until a process keeps dying."""
    import time

    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not stop["now"] and cluster.check(time.monotonic()):
        time.sleep(0.5)
