"""The ``torch`` profile backend: real forward passes of a Hugging Face architecture with random weights.

The model is built from a config (a voltana model spec, or any ``config.json`` given as ``hf_config``) with
``from_config``: nothing is downloaded. Prefill runs ``n`` sequences of ``tokens / n`` random token ids
with the LM head on the last token only (as a server does); decode runs one step of ``batch`` sequences
against a synthetic KV cache of ``kv_tokens / batch`` tokens each (random keys and values), cropped back
after every step so each timed call sees the same context. ``torch`` and ``transformers`` are imported
only here, only when this backend runs.
"""

from __future__ import annotations

import inspect
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voltana_cli import __version__
from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import ClockGuard, GpuDevice, LockStore, NvmlGpu, default_lock_dir
from voltana_cli.core.models.profile import Profile, ProfileMeta, Protocol, make_frame, now_iso, validate_frame, window_row
from voltana_cli.core.models.specs import ModelSpec, model_spec
from voltana_cli.core.profiling.measured import gpu_clocks, gpu_key_for, warn_if_no_energy
from voltana_cli.core.profiling.plan import ProfilePlan
from voltana_cli.core.profiling.request import PlanDefaults, ProfileRequest, RunHooks, plan_for
from voltana_cli.core.profiling.timing import Timer, Window, walk_plan

#: Defaults for what a request leaves open, on a GPU and on the CPU (where a tiny model is the point).
GPU_DEFAULTS = PlanDefaults(kv_per_request=(64, 256, 1024), prefill_tokens=(64, 256, 1024, 4096), prefill_seqs=(1, 2, 4, 8),
                            warmup=2, cooldown_s=2.0, min_window_s=0.5, max_batch=1024)
CPU_DEFAULTS = PlanDefaults(kv_per_request=(16, 64), prefill_tokens=(16, 64), prefill_seqs=(1, 2), warmup=1,
                            cooldown_s=0.0, min_window_s=0.0, max_batch=64)
#: Share of the free GPU memory the synthetic KV caches may take (the model and activations need the rest).
KV_MEMORY_SHARE = 0.6


def import_torch() -> tuple[Any, Any]:
    """The ``torch`` and ``transformers`` modules.

    Raises:
        UserError: either is not installed.
    """
    try:
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
    except ImportError:
        raise UserError(
            "the torch backend needs PyTorch and transformers: pip install 'voltana[torch]' "
            "(or use the sim backend)"
        ) from None
    return torch, transformers


def hf_config_from_spec(spec: ModelSpec, transformers: Any) -> Any:
    """A Llama-family config with the spec's shapes (all voltana's shipped models are Llama-shaped)."""
    return transformers.LlamaConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, vocab_size=spec.vocab_size,
        max_position_embeddings=spec.max_context_tokens, tie_word_embeddings=spec.tied_embeddings,
    )


def hf_config_from_file(path: Path, transformers: Any) -> Any:
    """A transformers config from a Hugging Face ``config.json``.

    Raises:
        UserError: about ``hf_config``: the file is missing, not JSON, or not a config transformers can build.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give a Hugging Face config.json", field="hf_config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); give a Hugging Face config.json", field="hf_config") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise UserError(f"{path}: no 'model_type' key; give a Hugging Face config.json", field="hf_config")
    mt = raw.pop("model_type")
    for k in ("architectures", "transformers_version", "torch_dtype", "dtype"):
        raw.pop(k, None)
    try:
        return transformers.AutoConfig.for_model(mt, **raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: transformers cannot build model_type {mt!r} ({exc})", field="hf_config") from None


class DecodeStep:
    """One decode step of a batch against its synthetic KV cache (``cache``), as a call. Every call sees the
    same context: the token a step appends is cropped off again."""

    def __init__(self, model: Any, torch: Any, ids: Any, pos: Any, cache: Any):
        self.model = model
        self._torch = torch
        self.ids = ids
        self.pos = pos
        self.cache = cache
        # transformers 5.x names the KV cache argument ``cache`` and deprecates ``past_key_values``, which the
        # 4.x releases this backend supports (>= 4.56) still need.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def __call__(self) -> Any:
        with self._torch.inference_mode():
            out = self.model(input_ids=self.ids, position_ids=self.pos, use_cache=True, logits_to_keep=1,
                             **{self._cache_arg: self.cache})
            self.cache.crop(-1)  # drop the token this step appended: every call sees the same context
        return out.logits


class TorchRunner:
    """Builds the model once and offers ``prefill(tokens, seqs)`` and ``decode(batch, kv_tokens)`` calls."""

    def __init__(self, hf_config: Any, device: str, dtype: str | None = None, seed: int = 0):
        torch, transformers = import_torch()
        self.torch = torch
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"{device}: PyTorch sees no CUDA GPU; use device cpu or the sim backend", field="device")
        self.device = torch.device(device)
        name = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        if not hasattr(torch, name):
            raise UserError(f"{name}: not a torch dtype; use bfloat16, float16 or float32", field="dtype")
        self.dtype = getattr(torch, name)
        self.dtype_name = name
        torch.manual_seed(seed)
        self.cfg = hf_config
        # Build (and randomly initialise) the weights on the target device: initialising an 8B model on the
        # CPU first takes minutes, on the GPU a second.
        try:
            with self.device:
                model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=self.dtype)
        except (ValueError, TypeError) as exc:
            raise UserError(f"transformers cannot build this architecture ({exc})") from None
        self.model = model.to(self.device).eval()
        self.vocab = int(hf_config.vocab_size)
        self.layers = int(hf_config.num_hidden_layers)
        self.kv_heads = int(getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads)
        self.head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads)
        self._transformers = transformers

    def sync(self) -> None:
        """Wait for the device's queued work (a no-op on the CPU)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes (keys and values, every layer)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.torch.tensor([], dtype=self.dtype).element_size()

    def prefill_fn(self, tokens: int, seqs: int) -> Callable[[], Any]:
        """A call that prefills ``seqs`` random sequences of ``tokens / seqs`` tokens (LM head on the last)."""
        torch = self.torch
        per = max(1, tokens // seqs)
        ids = torch.randint(0, self.vocab, (seqs, per), device=self.device)

        @torch.inference_mode()
        def run() -> Any:
            return self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits

        return run

    def decode_fn(self, batch: int, kv_tokens: int) -> DecodeStep:
        """A call that decodes one step of ``batch`` sequences against ``kv_tokens / batch`` cached tokens each."""
        torch = self.torch
        ctx = max(1, kv_tokens // batch)
        cache = self._transformers.DynamicCache()
        shape = (batch, self.kv_heads, ctx, self.head_dim)
        for layer in range(self.layers):
            k = torch.randn(shape, device=self.device, dtype=self.dtype)
            v = torch.randn(shape, device=self.device, dtype=self.dtype)
            cache.update(k, v, layer)
        ids = torch.randint(0, self.vocab, (batch, 1), device=self.device)
        pos = torch.full((batch, 1), ctx, device=self.device, dtype=torch.long)
        return DecodeStep(self.model, torch, ids, pos, cache)

    def release(self) -> None:
        """Return cached device memory (between configurations, so each allocates its own KV cache)."""
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def run_torch(
    plan: ProfilePlan,
    runner: TorchRunner,
    guard: ClockGuard,
    timer: Timer,
    clock_label: Callable[[int, Window], int],
    on_window: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict]:
    """Rows of real forward passes. ``clock_label(requested, window)`` gives the ``clock_mhz`` to record
    (the locked clock, or what the card ran at)."""

    def prefill(clock: int, t: int, n: int) -> Iterator[dict]:
        fn = runner.prefill_fn(t, n)
        for r in range(plan.repeats):
            w = timer.window(fn)
            yield window_row("prefill", clock_label(clock, w), n, max(1, t // n) * n, w.latency_s, w.energy_j, r)

    def decode(clock: int, b: int, kv: int) -> Iterator[dict]:
        fn = runner.decode_fn(b, kv)
        for r in range(plan.repeats):
            w = timer.window(fn)
            yield window_row("decode", clock_label(clock, w), b, b * max(1, kv // b), w.latency_s, w.energy_j, r)
        del fn  # the synthetic KV cache goes before the next configuration allocates its own
        runner.release()

    return walk_plan(plan, guard, prefill, decode, on_window, sleep)


def cpu_clock_mhz() -> int:
    """The CPU's reported clock (first core), for labelling CPU rows; 1 if unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                return max(1, int(math.floor(float(line.split(":", 1)[1]))))
    except (OSError, ValueError):
        pass
    return 1


@dataclass
class SeenClocks:
    """Labels each row with its requested clock and, when ``record`` (a GPU measured at its own clock),
    notes the clock NVML reported after each window, so the rows can be relabelled afterwards."""

    record: bool
    seen: list[int] = field(default_factory=list)

    def __call__(self, requested: int, w: Window) -> int:
        if self.record and w.clock_mhz:
            self.seen.append(w.clock_mhz)
        return requested


def _architecture(req: ProfileRequest, transformers: Any) -> tuple[Any, str]:
    """The transformers config to build and the model's name in the metadata."""
    if req.hf_config is not None:
        hf_cfg = hf_config_from_file(Path(req.hf_config), transformers)
        return hf_cfg, str(getattr(hf_cfg, "name_or_path", "") or Path(req.hf_config).stem)
    spec = model_spec(req.model_key())
    return hf_config_from_spec(spec, transformers), spec.name


def _open_gpu(req: ProfileRequest, device: str, torch: Any) -> tuple[list[GpuDevice], dict[str, Any], list[int]]:
    """The GPU of ``device`` through NVML, its identity and the clocks to profile on it."""
    if not torch.cuda.is_available():
        raise UserError(f"{req.device}: PyTorch sees no CUDA GPU; use device cpu or the sim backend", field="device")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    nv = NvmlGpu(index)
    identity = nv.identity()
    return [nv], identity, gpu_clocks(req, nv, identity)


def _relabel_at_own_clock(rows: list[dict], seen: list[int], fallback: int) -> str:
    """Give every row the median clock the card ran at (it was not locked); return the clock note."""
    med = int(statistics.median(seen)) if seen else fallback
    for r in rows:
        r["clock_mhz"] = med
    lo, hi = (min(seen), max(seen)) if seen else (med, med)
    return (f"clocks not locked: measured at the card's own clock; clock_mhz is the median SM clock NVML "
            f"reported after each window ({lo}-{hi} MHz seen)")


def profile_torch(req: ProfileRequest, hooks: RunHooks) -> Profile:
    """Measure the profile ``req`` asks for with real forward passes (random weights).

    Args:
        req: the request (``backend`` torch).
        hooks: progress and warnings.

    Raises:
        UserError: a missing dependency or GPU, a bad architecture, clocks the card cannot lock, or an
            invalid plan.
    """
    torch, transformers = import_torch()
    hf_cfg, model_name = _architecture(req, transformers)
    device = "cuda:0" if req.device == "cuda" else req.device
    on_gpu = device.startswith("cuda")
    if req.lock_clocks and not on_gpu:
        raise UserError("needs a GPU: turn it off, or use device cuda on a machine with an NVIDIA GPU", field="lock_clocks")
    gpus, identity, clocks = _open_gpu(req, device, torch) if on_gpu else ([], {}, [cpu_clock_mhz()])
    runner = TorchRunner(hf_cfg, device, req.dtype, req.seed)
    kv_cap = None
    if on_gpu:
        free, _ = torch.cuda.mem_get_info(runner.device)
        kv_cap = int(free * KV_MEMORY_SHARE / max(runner.kv_bytes_per_token(), 1))
    plan = plan_for(req, clocks, kv_cap, GPU_DEFAULTS if on_gpu else CPU_DEFAULTS,
                    max_context=getattr(hf_cfg, "max_position_embeddings", None))
    timer = Timer(gpus=gpus, min_window_s=plan.min_window_s, warmup=plan.warmup, sync=runner.sync)
    labels = SeenClocks(record=on_gpu and not req.lock_clocks)
    if hooks.on_start:
        hooks.on_start(plan.windows)
    rows: list[dict] = []
    store = LockStore(default_lock_dir()) if on_gpu else None  # a real card's lock outlives a kill -9
    with ClockGuard(gpus, lock=req.lock_clocks, on_reset_error=hooks.warn, store=store, on_notice=hooks.warn) as guard:
        rows.extend(run_torch(plan, runner, guard, timer, labels, hooks.on_window, time.sleep))
    if not on_gpu:
        note = "CPU run: clock_mhz is the CPU's reported clock; no energy counter (energy_j and power_w empty)"
    elif req.lock_clocks:
        note = "each row at its locked clock_mhz"
    else:
        note = _relabel_at_own_clock(rows, labels.seen, clocks[0])
    warn_if_no_energy(rows, gpus, hooks.warn)
    meta = _torch_meta(req, identity, on_gpu, model_name, runner, plan, note, (torch, transformers))
    return Profile(validate_frame(make_frame(rows), "profile"), meta, "<new>")


def _torch_meta(req: ProfileRequest, identity: dict[str, Any], on_gpu: bool, model_name: str, runner: TorchRunner,
                plan: ProfilePlan, note: str, modules: tuple[Any, Any]) -> ProfileMeta:
    torch, transformers = modules
    gpu_name = identity.get("gpu_name") or (platform.processor() or platform.machine() or "cpu")
    return ProfileMeta(
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
