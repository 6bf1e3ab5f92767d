"""The live world: ``voltana serve``'s cluster config, emulated engines, router and launcher, and the live
bench client. It runs the same pure policies (``core.policy``) and the same instance scheduler
(``core.sim.instance``) as the simulated world; aiohttp and the Prometheus client are imported by the
modules that serve HTTP."""

from voltana_cli.core.live.client import LiveRun, get_json, live_report, replay, run_live_bench
from voltana_cli.core.live.config import ClusterSpec, InstanceSpec, RouterSpec, cluster_from_flags, load_cluster
from voltana_cli.core.live.launch import (
    Planned,
    Supervisor,
    check_ports_free,
    check_sglang,
    engine_argv,
    installed_sglang,
    plan,
    sglang_argv,
    sidecar_argv,
    sidecar_plan,
)
from voltana_cli.core.live.router import Router, make_router_app, run_router
from voltana_cli.core.live.sidecar import EngineGpu, clock_path, instance_gpus, recover_clocks

__all__ = [
    "ClusterSpec",
    "EngineGpu",
    "InstanceSpec",
    "LiveRun",
    "Planned",
    "Router",
    "RouterSpec",
    "Supervisor",
    "check_ports_free",
    "check_sglang",
    "clock_path",
    "cluster_from_flags",
    "engine_argv",
    "get_json",
    "installed_sglang",
    "instance_gpus",
    "live_report",
    "load_cluster",
    "make_router_app",
    "plan",
    "recover_clocks",
    "replay",
    "run_live_bench",
    "run_router",
    "sglang_argv",
    "sidecar_argv",
    "sidecar_plan",
]
