"""``voltana profile`` as a library call: choose the backend, the GPU access, the plan; run it under a
``ClockGuard``; return a validated ``Profile`` with its metadata."""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voltana_cli import __version__
from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware.gpu import ClockGuard, EmulatedGpu, GpuDevice, NvmlGpu
from voltana_cli.core.models.analytical import PerfModel
from voltana_cli.core.policy.registry import default_levels
from voltana_cli.core.profiling.format import Profile, ProfileMeta, Protocol, make_frame, now_iso, validate_frame
from voltana_cli.core.profiling.plan import (
    DEFAULT_KV_PER_REQUEST,
    DEFAULT_PREFILL_SEQS,
    DEFAULT_PREFILL_TOKENS,
    ProfilePlan,
    Timer,
    Window,
    default_batch_sizes,
    default_clocks,
    run_sim,
)
from voltana_cli.core.models.specs import available_gpus, engine_spec, gpu_spec, model_spec

BACKENDS = ("sim", "torch", "sglang")


@dataclass
class ProfileRequest:
    """Everything ``voltana profile`` was asked; ``None`` means the backend's default."""

    backend: str = "sim"
    gpu: str | None = None
    model: str = "llama-3.1-8b"
    tp: int | None = None
    clocks_mhz: list[int] | None = None
    batch_sizes: list[int] | None = None
    kv_per_request: list[int] | None = None
    prefill_tokens: list[int] | None = None
    prefill_seqs: list[int] | None = None
    phases: tuple[str, ...] = ("prefill", "decode")
    repeats: int = 3
    warmup: int | None = None
    cooldown_s: float | None = None
    min_window_s: float | None = None
    noise: float = 0.03
    seed: int = 0
    lock_clocks: bool = False
    device: str = "cuda"
    dtype: str | None = None
    hf_config: Path | None = None
    sglang_url: str = "http://127.0.0.1:30000"
    gpu_indices: list[int] | None = None  # sglang: local GPUs of the server, for NVML energy and clocks
    window_tokens: int = 32  # sglang: decode tokens per request in a timed window
    emulated_state: Path | None = None  # sim: mirror the emulated GPU's lock state to this file (tests)
    slow_s: float = 0.0  # sim: sleep per window (lets tests interrupt a run); not a user option
    notes: list[str] = field(default_factory=list)


def gpu_key_for(name: str) -> str:
    """voltana's GPU key for a device name (e.g. "NVIDIA H100 80GB HBM3" -> h100-80g-sxm), else a slug."""
    low = name.lower()
    for key in available_gpus():
        spec = gpu_spec(key)
        if spec.display_name.lower() in low or low in spec.display_name.lower():
            return key
    if "h100" in low and ("hbm3" in low or "sxm" in low):
        return "h100-80g-sxm"
    if "a100" in low and "80gb" in low and "pcie" not in low:
        return "a100-80g-sxm4"
    return re.sub(r"[^a-z0-9]+", "-", low).strip("-") or "unknown-gpu"


def run_profile(req: ProfileRequest, on_start: Callable[[int], None] | None = None,
                on_window: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None) -> Profile:
    """Run the profile described by ``req``; clocks are restored however this returns."""
    if req.backend not in BACKENDS:
        raise UserError(f"--backend {req.backend!r}: use one of {', '.join(BACKENDS)}")
    if req.backend == "sim":
        return _run_sim(req, on_start, on_window, warn)
    if req.backend == "sglang":
        return _run_sglang(req, on_start, on_window, warn)
    return _run_torch(req, on_start, on_window, warn)


def _plan(req: ProfileRequest, clocks: list[int], kv_capacity: int | None, graph_max: int | None, max_batch: int,
          defaults: dict) -> ProfilePlan:
    return ProfilePlan(
        clocks_mhz=tuple(clocks),
        batch_sizes=tuple(req.batch_sizes or default_batch_sizes(max_batch, graph_max)),
        kv_per_request=tuple(req.kv_per_request or defaults["kv"]),
        prefill_tokens=tuple(req.prefill_tokens or defaults["tokens"]),
        prefill_seqs=tuple(req.prefill_seqs or defaults["seqs"]),
        repeats=req.repeats,
        warmup=defaults["warmup"] if req.warmup is None else req.warmup,
        cooldown_s=defaults["cooldown_s"] if req.cooldown_s is None else req.cooldown_s,
        min_window_s=defaults["min_window_s"] if req.min_window_s is None else req.min_window_s,
        phases=req.phases,
        kv_capacity=kv_capacity,
    )


def _gpu_clocks(req: ProfileRequest, gpu: GpuDevice, identity: dict) -> list[int]:
    """Clocks to profile on a real GPU: with --lock-clocks the requested ones (each one the card supports,
    default its current clock); without it, only the clock the card runs at now."""
    if not req.lock_clocks:
        if req.clocks_mhz and len(req.clocks_mhz) > 1:
            raise UserError("several --clocks need --lock-clocks (without it the card runs at its own clock)")
        return [gpu.sm_clock_mhz()]
    clocks = req.clocks_mhz or [gpu.sm_clock_mhz()]
    avail = set(identity["clocks_available_mhz"])
    bad = [c for c in clocks if c not in avail]
    if bad:
        raise UserError(f"--clocks {bad[0]}: this GPU supports {min(avail)}-{max(avail)} MHz in its own steps; "
                        "pick from `nvidia-smi -q -d SUPPORTED_CLOCKS`")
    return clocks


def _warn_if_no_energy(rows: list[dict], gpus: list[GpuDevice], warn: Callable[[str], None] | None) -> None:
    if gpus and warn and not any(np.isfinite(r["energy_j"]) for r in rows):
        warn("the GPU's energy counter gave no readings: energy_j is empty (unavailable), not 0")


def _run_sim(req: ProfileRequest, on_start, on_window, warn) -> Profile:
    gkey = req.gpu or "a100-80g-sxm4"
    gpu, model, engine = gpu_spec(gkey), model_spec(req.model), engine_spec()
    tp = req.tp or model.default_tp
    pm = PerfModel(gpu, model, engine, tp=tp)
    clocks = req.clocks_mhz or default_clocks(pm.clocks, default_levels(pm))
    for c in clocks:
        pm.check_clock(c)
    plan = _plan(req, clocks, pm.kv_capacity_tokens, engine.cuda_graph_max_bs, 1024,
                 {"kv": DEFAULT_KV_PER_REQUEST, "tokens": DEFAULT_PREFILL_TOKENS, "seqs": DEFAULT_PREFILL_SEQS,
                  "warmup": 0, "cooldown_s": 0.0, "min_window_s": 0.0})
    if max(plan.batch_sizes) > pm.max_batch:
        raise UserError(f"--batch-sizes {max(plan.batch_sizes)} is above the modelled maximum {pm.max_batch}")
    emu = EmulatedGpu(gpu, state_file=req.emulated_state)
    if on_start:
        on_start(plan.windows)
    rows: list[dict] = []

    def tick(phase: str) -> None:
        if req.slow_s:
            time.sleep(req.slow_s)
        if on_window:
            on_window(phase)

    # The emulated card's clock really is locked to each profiled clock, through the same guard as a GPU.
    with ClockGuard([emu], lock=True, on_reset_error=warn) as guard:
        rows.extend(run_sim(plan, pm, guard, req.noise, np.random.default_rng(req.seed), tick))
    meta = ProfileMeta(
        gpu=gpu.name, gpu_name=gpu.display_name, driver=None, power_limit_w=gpu.power_limit_w,
        clocks_available_mhz=gpu.clocks_mhz, memory_clock_mhz=gpu.memory_clock_mhz, tp=tp, engine=engine.name,
        engine_version="modelled", model=model.name, backend="sim", device="emulated",
        protocol=Protocol(warmup=plan.warmup, repeats=plan.repeats, cooldown_s=plan.cooldown_s,
                          min_window_s=plan.min_window_s, noise=req.noise),
        clocks_locked=True, clock_note="modelled: each row is at exactly its clock_mhz",
        voltana_version=__version__, created=now_iso(),
        notes=[f"analytical model {gpu.name} x {model.name} (tp {tp}, {engine.name}); lognormal latency noise "
               f"sigma {req.noise:g}, seed {req.seed}", *req.notes],
    )
    return Profile(validate_frame(make_frame(rows), "profile"), meta, "<new>")


def _run_torch(req: ProfileRequest, on_start, on_window, warn) -> Profile:
    from voltana_cli.core.profiling import torch_backend as tb  # noqa: PLC0415

    torch, transformers = tb.import_torch()
    if req.hf_config is not None:
        hf_cfg = tb.hf_config_from_file(Path(req.hf_config), transformers)
        model_name = str(getattr(hf_cfg, "name_or_path", "") or Path(req.hf_config).stem)
    else:
        spec = model_spec(req.model)
        hf_cfg = tb.hf_config_from_spec(spec, transformers)
        model_name = spec.name
    device = req.device
    if device == "cuda":
        device = "cuda:0"
    on_gpu = device.startswith("cuda")
    if req.lock_clocks and not on_gpu:
        raise UserError("--lock-clocks needs a GPU: drop it, or use --device cuda on a machine with an NVIDIA GPU")
    gpus: list[GpuDevice] = []
    identity: dict = {}
    if on_gpu:
        if not torch.cuda.is_available():
            raise UserError(f"--device {req.device}: PyTorch sees no CUDA GPU; use --device cpu or --backend sim")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        nv = NvmlGpu(index)
        gpus = [nv]
        identity = nv.identity()
        clocks = _gpu_clocks(req, nv, identity)
    else:
        clocks = [tb.cpu_clock_mhz()]
    runner = tb.TorchRunner(hf_cfg, device, req.dtype, req.seed)
    kv_cap = None
    if on_gpu:
        free, _ = torch.cuda.mem_get_info(runner.device)
        kv_cap = int(free * 0.6 / max(runner.kv_bytes_per_token(), 1))
    plan = _plan(req, clocks, kv_cap, None, 1024 if on_gpu else 64,
                 {"kv": (64, 256, 1024) if on_gpu else (16, 64), "tokens": (64, 256, 1024, 4096) if on_gpu else (16, 64),
                  "seqs": (1, 2, 4, 8) if on_gpu else (1, 2), "warmup": 2 if on_gpu else 1,
                  "cooldown_s": 2.0 if on_gpu else 0.0, "min_window_s": 0.5 if on_gpu else 0.0})
    timer = Timer(gpus=gpus, min_window_s=plan.min_window_s, warmup=plan.warmup, sync=runner.sync)
    seen_clocks: list[int] = []

    def label(requested: int, w: Window) -> int:
        if req.lock_clocks or not on_gpu:
            return requested
        if w.clock_mhz:
            seen_clocks.append(w.clock_mhz)
        return requested  # relabelled below to the median observed clock

    if on_start:
        on_start(plan.windows)
    rows: list[dict] = []
    with ClockGuard(gpus, lock=req.lock_clocks, on_reset_error=warn) as guard:
        rows.extend(tb.run_torch(plan, runner, guard, timer, label, on_window, time.sleep))
    note = "each row at its locked clock_mhz" if req.lock_clocks else ""
    if on_gpu and not req.lock_clocks:
        med = int(statistics.median(seen_clocks)) if seen_clocks else clocks[0]
        for r in rows:
            r["clock_mhz"] = med
        lo, hi = (min(seen_clocks), max(seen_clocks)) if seen_clocks else (med, med)
        note = (f"clocks not locked: measured at the card's own clock; clock_mhz is the median SM clock NVML "
                f"reported after each window ({lo}-{hi} MHz seen)")
    if not on_gpu:
        note = "CPU run: clock_mhz is the CPU's reported clock; no energy counter (energy_j and power_w empty)"
    _warn_if_no_energy(rows, gpus, warn)
    gpu_name = identity.get("gpu_name") or (platform.processor() or platform.machine() or "cpu")
    meta = ProfileMeta(
        gpu=gpu_key_for(gpu_name) if on_gpu else "cpu", gpu_name=gpu_name, driver=identity.get("driver"),
        power_limit_w=identity.get("power_limit_w"), clocks_available_mhz=identity.get("clocks_available_mhz", []),
        memory_clock_mhz=identity.get("memory_clock_mhz"), tp=1, engine="transformers",
        engine_version=f"transformers {transformers.__version__}, torch {torch.__version__}", model=model_name,
        dtype=runner.dtype_name, backend="torch", device=str(runner.device),
        protocol=Protocol(warmup=plan.warmup, repeats=plan.repeats, cooldown_s=plan.cooldown_s,
                          min_window_s=plan.min_window_s),
        clocks_locked=bool(req.lock_clocks), clock_note=note, voltana_version=__version__, created=now_iso(),
        notes=["random weights (from_config); decode against a synthetic KV cache; LM head on the last token only",
               *req.notes],
    )
    return Profile(validate_frame(make_frame(rows), "profile"), meta, "<new>")


def _run_sglang(req: ProfileRequest, on_start, on_window, warn) -> Profile:
    from voltana_cli.core.profiling import sglang_backend as sb  # noqa: PLC0415

    if req.window_tokens < 4:
        raise UserError(f"--window-tokens {req.window_tokens}: use at least 4 decode tokens per window")
    client = sb.SglangClient(req.sglang_url)
    info = client.server_info()
    gpus: list[GpuDevice] = [NvmlGpu(i) for i in (req.gpu_indices or [])]
    identity = gpus[0].identity() if gpus else {}
    if req.lock_clocks and not gpus:
        raise UserError("--lock-clocks needs --gpu-index (the server's GPUs on this machine)")
    if gpus:
        clocks = _gpu_clocks(req, gpus[0], identity)
    else:
        if not req.clocks_mhz or len(req.clocks_mhz) != 1:
            raise UserError("without --gpu-index voltana cannot read the server's clock: pass --gpu-index, or "
                            "--clocks with the one clock the server's GPUs run at")
        clocks = req.clocks_mhz
    plan = _plan(req, clocks, None, None, 256,
                 {"kv": (64, 256, 1024), "tokens": (256, 1024, 4096), "seqs": (1, 2, 4), "warmup": 1,
                  "cooldown_s": 2.0 if req.lock_clocks else 0.0, "min_window_s": 0.0})
    if on_start:
        on_start(plan.windows)
    rows: list[dict] = []
    with ClockGuard(gpus, lock=req.lock_clocks, on_reset_error=warn) as guard:
        rows.extend(sb.run_sglang(plan, client, guard, gpus, 32000, req.window_tokens, req.seed, on_window))
    _warn_if_no_energy(rows, gpus, warn)
    gpu_name = identity.get("gpu_name") or "unknown GPU (no --gpu-index)"
    model_name = str(info.get("model_path") or info.get("served_model_name") or "unknown-model")
    meta = ProfileMeta(
        gpu=gpu_key_for(gpu_name) if gpus else "unknown-gpu", gpu_name=gpu_name, driver=identity.get("driver"),
        power_limit_w=identity.get("power_limit_w"), clocks_available_mhz=identity.get("clocks_available_mhz", []),
        memory_clock_mhz=identity.get("memory_clock_mhz"), tp=int(info.get("tp_size") or 1), engine="sglang",
        engine_version=str(info.get("version")) if info.get("version") else None, model=model_name,
        dtype=str(info.get("dtype") or "auto"), backend="sglang", device=client.url,
        protocol=Protocol(warmup=plan.warmup, repeats=plan.repeats, cooldown_s=plan.cooldown_s, min_window_s=0.0),
        clocks_locked=bool(req.lock_clocks),
        clock_note=("each row at its locked clock_mhz" if req.lock_clocks else
                    "clocks not locked: clock_mhz is the SM clock read when profiling started"
                    if gpus else "clock_mhz as given by --clocks; not read from the GPU"),
        voltana_version=__version__, created=now_iso(),
        notes=["prefill: wall time of a burst of max_new_tokens=1 requests (HTTP overhead included); "
               f"decode: median streamed inter-token gap, {req.window_tokens}-token windows, random token ids",
               *req.notes],
    )
    return Profile(validate_frame(make_frame(rows), "profile"), meta, "<new>")
