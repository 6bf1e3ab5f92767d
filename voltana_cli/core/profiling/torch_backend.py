"""The ``torch`` profile backend: real forward passes of a Hugging Face architecture with random weights.

The model is built from a config (a voltana model spec, or any ``config.json`` via ``--hf-config``) with
``from_config``: nothing is downloaded. Prefill runs ``n`` sequences of ``tokens / n`` random token ids
with the LM head on the last token only (as a server does); decode runs one step of ``batch`` sequences
against a synthetic KV cache of ``kv_tokens / batch`` tokens each (random keys and values), cropped back
after every step so each timed call sees the same context. ``torch`` and ``transformers`` are imported
only here, only when this backend runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware.gpu import ClockGuard
from voltana_cli.core.profiling.plan import ProfilePlan, Timer, Window, walk_plan, window_row
from voltana_cli.core.models.specs import ModelSpec


def import_torch() -> tuple[Any, Any]:
    try:
        import torch  # noqa: PLC0415
        import transformers  # noqa: PLC0415
    except ImportError:
        raise UserError(
            "the torch backend needs PyTorch and transformers: pip install 'voltana[torch]' "
            "(or use --backend sim)"
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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--hf-config {path}: no such file; give a Hugging Face config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--hf-config {path}: not valid JSON ({exc}); give a Hugging Face config.json") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise UserError(f"--hf-config {path}: no 'model_type' key; give a Hugging Face config.json")
    mt = raw.pop("model_type")
    for k in ("architectures", "transformers_version", "torch_dtype", "dtype"):
        raw.pop(k, None)
    try:
        return transformers.AutoConfig.for_model(mt, **raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--hf-config {path}: transformers cannot build model_type {mt!r} ({exc})") from None


class TorchRunner:
    """Builds the model once and offers ``prefill(tokens, seqs)`` and ``decode(batch, kv_tokens)`` calls."""

    def __init__(self, hf_config: Any, device: str, dtype: str | None = None, seed: int = 0):
        torch, transformers = import_torch()
        self.torch = torch
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: PyTorch sees no CUDA GPU; use --device cpu or --backend sim")
        self.device = torch.device(device)
        name = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        if not hasattr(torch, name):
            raise UserError(f"--dtype {name}: not a torch dtype; use bfloat16, float16 or float32")
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
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.torch.tensor([], dtype=self.dtype).element_size()

    def prefill_fn(self, tokens: int, seqs: int) -> Callable[[], object]:
        torch = self.torch
        per = max(1, tokens // seqs)
        ids = torch.randint(0, self.vocab, (seqs, per), device=self.device)

        @torch.inference_mode()
        def run() -> object:
            return self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits

        return run

    def decode_fn(self, batch: int, kv_tokens: int) -> Callable[[], object]:
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

        @torch.inference_mode()
        def run() -> object:
            out = self.model(input_ids=ids, past_key_values=cache, position_ids=pos, use_cache=True, logits_to_keep=1)
            cache.crop(-1)  # drop the token this step appended: every call sees ctx tokens
            return out.logits

        run.cache = cache  # type: ignore[attr-defined]  (for inspection)
        return run

    def release(self) -> None:
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
