"""What ``voltana profile`` is asked (``ProfileRequest``) and how a request and a backend's defaults become
a ``ProfilePlan``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.profile import default_profile_dir
from voltana_cli.core.models.specs import defaults
from voltana_cli.core.profiling.plan import ProfilePlan, default_batch_sizes

BACKENDS = ("sim", "torch", "sglang")


@dataclass
class ProfileRequest:
    """Everything ``voltana profile`` was asked; ``None`` means the backend's default (for ``gpu`` and
    ``model``: the spec data's defaults)."""

    backend: str = "sim"
    gpu: str | None = None
    model: str | None = None
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
    notes: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Reject a request no backend can run.

        Raises:
            UserError: an unknown ``backend``, or a ``gpu`` given to a backend that reads it from the device.
        """
        if self.backend not in BACKENDS:
            raise UserError(f"{self.backend!r} is not a backend: use one of {', '.join(BACKENDS)}", field="backend")
        if self.backend != "sim" and self.gpu is not None:
            raise UserError("is for the sim backend; a measuring backend reads the GPU from the device", field="gpu")
        if self.seed < 0:
            raise UserError(f"{self.seed} must be a whole number >= 0", field="seed")
        # Options of one backend given to another would be silently unused: say so instead.
        for name, owner in (("hf_config", "torch"), ("dtype", "torch"), ("gpu_indices", "sglang")):
            if getattr(self, name) is not None and self.backend != owner:
                raise UserError(f"is for the {owner} backend; the {self.backend} backend does not read it: leave it "
                                "out", field=name)
        if self.tp is not None and self.tp < 1:
            raise UserError(f"{self.tp} must be >= 1 (GPUs per instance); leave it out for the model's default",
                            field="tp")

    def gpu_key(self) -> str:
        """The GPU spec the sim backend models."""
        return self.gpu or defaults().gpu

    def model_key(self) -> str:
        """The model spec to model (sim) or to build (torch, without ``hf_config``)."""
        return self.model or defaults().model

    def planned_out_dir(self) -> Path | None:
        """The default profile directory when it is known before running: the sim backend's
        ``profiles/<gpu>/<model>``; ``None`` for the measuring backends, which learn the GPU and model as they
        run."""
        if self.backend != "sim":
            return None
        return default_profile_dir(self.gpu_key(), self.model_key())


@dataclass(frozen=True)
class PlanDefaults:
    """A backend's defaults for what a request leaves open."""

    kv_per_request: tuple[int, ...]
    prefill_tokens: tuple[int, ...]
    prefill_seqs: tuple[int, ...]
    warmup: int
    cooldown_s: float
    min_window_s: float
    max_batch: int  # the largest default batch size
    graph_max: int | None = None  # the engine's largest CUDA-graph batch, when known


def plan_for(req: ProfileRequest, clocks: list[int], kv_capacity: int | None, dflt: PlanDefaults,
             max_context: int | None = None) -> ProfilePlan:
    """The plan a request asks for, the backend's defaults filling what it leaves open.

    Args:
        req: the request.
        clocks: the clocks to profile (the backend chose them: the request's, or its defaults).
        kv_capacity: KV tokens the device holds, capping decode configurations (``None``: no cap).
        dflt: the backend's defaults.
        max_context: the model's context in tokens, when known (no profiled request is longer).

    Raises:
        UserError: the plan is invalid (see ``ProfilePlan``).
    """
    return ProfilePlan(
        clocks_mhz=tuple(clocks),
        batch_sizes=tuple(req.batch_sizes or default_batch_sizes(dflt.max_batch, dflt.graph_max)),
        kv_per_request=tuple(req.kv_per_request or dflt.kv_per_request),
        prefill_tokens=tuple(req.prefill_tokens or dflt.prefill_tokens),
        prefill_seqs=tuple(req.prefill_seqs or dflt.prefill_seqs),
        repeats=req.repeats,
        warmup=dflt.warmup if req.warmup is None else req.warmup,
        cooldown_s=dflt.cooldown_s if req.cooldown_s is None else req.cooldown_s,
        min_window_s=dflt.min_window_s if req.min_window_s is None else req.min_window_s,
        phases=req.phases,
        kv_capacity=kv_capacity,
        max_context=max_context,
    )


@dataclass(frozen=True)
class RunHooks:
    """What the caller of a profile run is told: the number of timed windows when it starts, each window's
    phase as it ends, and warnings (e.g. a clock that could not be reset)."""

    on_start: Callable[[int], None] | None = None
    on_window: Callable[[str], None] | None = None
    warn: Callable[[str], None] | None = None
