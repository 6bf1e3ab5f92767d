"""``voltana serve``: launch a P/D cluster (stock SGLang or emulated engines) behind voltana's router."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from voltana_cli.commands import user_errors
from voltana_cli.core.errors import UserError
from voltana_cli.core.live import (
    ClusterSpec,
    Router,
    Supervisor,
    check_ports_free,
    check_sglang,
    cluster_from_flags,
    installed_sglang,
    load_cluster,
    plan,
    run_router,
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
    console = Console(stderr=True)
    with user_errors(FLAGS):
        if config is not None:
            spec = load_cluster(config)
        else:
            spec = cluster_from_flags(engine, prefill, decode, model, gpu, tp, host, port, base_port,
                                      **({"policy": policy} if policy else {}))
        if config is not None and (host != "127.0.0.1" or port != 8000):
            spec = ClusterSpec.model_validate({**spec.model_dump(), "router": {"host": host, "port": port}})
        if not _loopback(spec.router.host) and not api_key:
            raise UserError(f"the router would listen on {spec.router.host}, beyond this machine: give --api-key "
                            "(or VOLTANA_API_KEY) so that inference needs it", field="api_key")
        router = Router(spec, policy, admin_token, api_key)  # checks the policy before anything starts
        ipc_dir = Path(os.environ.get("VOLTANA_STATE_DIR") or tempfile.gettempdir())
        planned = [] if router_only else plan(spec, node, ipc_dir)
        runs_router = router_only or node is None or node == spec.router.host
        if dry_run:
            _print_plan(spec, planned, runs_router, router.policy_name)
            return
        if spec.engine == "sglang" and planned:
            check_sglang(installed_sglang())
        check_ports_free(spec, node, runs_router, instances=not router_only)
        log_dir = Path(tempfile.mkdtemp(prefix="voltana-serve-"))
        sup = Supervisor(log_dir)
        try:
            sup.start(planned)
            sup.wait_healthy(ready_timeout_s or (60.0 if spec.engine == "sim" else 1800.0))
            console.print(f"voltana serve: {len(planned)} {spec.engine} instance(s) ready (logs in {log_dir})")
            if runs_router:
                _event_loop_runner()(_run(router, spec, sup, console))
            else:
                _wait(sup)
        finally:
            sup.stop()
            console.print("voltana serve: stopped")


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
               f"{len(spec.of_role('prefill'))}P{len(spec.of_role('decode'))}D, policy {policy}")
    for p in planned:
        typer.echo(f"# {p.name} (health: {p.health_url})")
        typer.echo(p.shell())
    if runs_router:
        typer.echo(f"# router: voltana's, in this process, on http://{spec.router.host}:{spec.router.port}")


async def _run(router: Router, spec: ClusterSpec, sup: Supervisor, console: Console) -> None:
    """The router until SIGINT/SIGTERM, or until an instance process dies (then everything stops)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(run_router(router, spec.router.host, spec.router.port, ready=lambda: console.print(
        f"voltana serve: router on http://{spec.router.host}:{spec.router.port} (policy {router.policy_name})")))

    restarts: dict[str, list[float]] = {}

    async def watch() -> None:
        # An instance that dies is restarted (its requests in flight got errors; the router routes around it
        # until its health probe passes again); one that keeps dying stops the whole cluster.
        while not stop.is_set():
            for name, code in sup.dead():
                now = loop.time()
                recent = [t for t in restarts.get(name, []) if now - t < RESTART_WINDOW_S]
                if len(recent) >= MAX_RESTARTS:
                    console.print(f"voltana serve: {name} exited with code {code} {MAX_RESTARTS + 1} times within "
                                  f"{RESTART_WINDOW_S:g} s: {sup.log_tail(name)}; stopping")
                    stop.set()
                    break
                console.print(f"voltana serve: {name} exited with code {code}; restarting it")
                restarts[name] = [*recent, now]
                sup.restart(name)
            await asyncio.sleep(0.5)

    watcher = asyncio.ensure_future(watch())
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for t in (task, watcher, waiter):
        t.cancel()
    await asyncio.gather(task, watcher, waiter, return_exceptions=True)
    if task in done and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


def _wait(sup: Supervisor) -> None:
    """This node runs instances only: until a signal, or until one of them dies."""
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    import time

    while not stop["now"] and not sup.dead():
        time.sleep(0.5)
