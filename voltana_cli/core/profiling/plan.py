"""The profile plan: which configurations a profile measures.

A plan is a grid: clocks x decode (batch size, KV tokens) x prefill (batch tokens, sequences) x repeats.
The default decode batch sizes sample both sides of every multiple of 8 up to 256 and of 128 above
(1, 2, 4, 8, 9, 16, 17, ..., 256, 257, 384, 385, ...), so a step at any of those boundaries (CUDA-graph
padding, GEMM tiles, the largest captured graph) shows up as a jump between two neighbours; that is what
EcoPred's boundary detector reads. It is the paper's 46-size grid made denser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.models.specs import GpuSpec

DEFAULT_KV_PER_REQUEST = (64, 256, 1024)
DEFAULT_PREFILL_TOKENS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_PREFILL_SEQS = (1, 2, 3, 4, 6, 8, 12, 16)
#: Shortest prompt a multi-sequence prefill configuration uses (tokens per sequence).
MIN_TOKENS_PER_SEQ = 16
#: How many clocks ``default_clocks`` spreads over the upper half when the spec's step does not fit the
#: card's clock grid.
FALLBACK_CLOCK_COUNT = 7
#: Bounds on a plan (each far above any useful value; beyond them a run is a typo that would never end).
MAX_REPEATS = 1000
MAX_WAIT = {"warmup": 1000, "cooldown_s": 3600.0, "min_window_s": 600.0}
MAX_PREFILL_TOKENS = 1_048_576


def default_batch_sizes(max_batch: int = 1024, graph_max: int | None = None) -> list[int]:
    """The default decode batch sizes.

    Args:
        max_batch: the largest batch to profile (one above it is kept, for the boundary at it).
        graph_max: the largest CUDA-graph batch, if known.

    Returns:
        1, 2, 4, then (8k, 8k+1) up to 257, then (128k, 128k+1) up to ``max_batch``; plus ``graph_max``
        and the batch above it.
    """
    sizes = {1, 2, 4}
    for b in range(8, min(256, max_batch) + 1, 8):
        sizes.update((b, b + 1))
    for b in range(384, max_batch + 1, 128):
        sizes.update((b, b + 1))
    if graph_max:
        sizes.update((graph_max, graph_max + 1))
    return sorted(s for s in sizes if s <= max_batch + 1)


def default_clocks(gpu: GpuSpec) -> list[int]:
    """The clocks a default profile of ``gpu`` visits.

    Args:
        gpu: the GPU spec; its ``profile_clock_step_mhz`` spaces the clocks and its ``ecofreq_levels_mhz``
            are always included (the policies run at them).

    Returns:
        Every supported clock from half the maximum up, ``profile_clock_step_mhz`` apart counting down from
        the maximum (A100: 780 ... 1410), plus the EcoFreq levels, ascending.
    """
    clocks = gpu.clocks_mhz
    top = clocks[-1]
    step = gpu.profile_clock_step_mhz
    picked = {c for c in clocks if c >= top / 2 and (top - c) % step == 0}
    if len(picked) < 2:  # the step does not fit this card's clock grid: spread a few clocks evenly instead
        upper = [c for c in clocks if c >= top / 2]
        picked = {upper[int(round(i))] for i in np.linspace(0, len(upper) - 1, FALLBACK_CLOCK_COUNT)}
    picked.update(c for c in gpu.ecofreq_levels_mhz if c in clocks)
    return sorted(picked)


@dataclass(frozen=True)
class ProfilePlan:
    """What to measure. Decode KV tokens are ``batch * kv_per_request``, capped at ``kv_capacity``; no
    request is longer than ``max_context`` (the model's context, when known).

    Raises:
        UserError: on construction, naming the field (``clocks_mhz``, ``batch_sizes``, ``repeats``, ...)
            whose value cannot make a plan, or saying which combination leaves a phase without configurations.
    """

    clocks_mhz: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    kv_per_request: tuple[int, ...] = DEFAULT_KV_PER_REQUEST
    prefill_tokens: tuple[int, ...] = DEFAULT_PREFILL_TOKENS
    prefill_seqs: tuple[int, ...] = DEFAULT_PREFILL_SEQS
    repeats: int = 3
    warmup: int = 1
    cooldown_s: float = 0.0
    min_window_s: float = 0.0
    phases: tuple[str, ...] = ("prefill", "decode")
    kv_capacity: int | None = None
    max_context: int | None = None

    def __post_init__(self) -> None:
        for name in ("clocks_mhz", "batch_sizes", "kv_per_request", "prefill_tokens", "prefill_seqs"):
            vals: tuple[int, ...] = getattr(self, name)
            if not vals:
                raise UserError("is empty: give at least one value", field=name)
            bad = [v for v in vals if v <= 0]
            if bad:
                raise UserError(f"has {bad[0]}: every value must be > 0", field=name)
        if self.repeats < 1:
            raise UserError(f"{self.repeats} is below 1: measure each configuration at least once", field="repeats")
        if self.repeats > MAX_REPEATS:
            raise UserError(f"{self.repeats} is above {MAX_REPEATS} windows per configuration", field="repeats")
        for name in ("warmup", "cooldown_s", "min_window_s"):
            v = getattr(self, name)
            if not 0 <= v <= MAX_WAIT[name]:  # NaN fails this too
                raise UserError(f"{v} is out of range: use a number from 0 to {MAX_WAIT[name]:g}", field=name)
        if max(self.prefill_tokens) > MAX_PREFILL_TOKENS:
            raise UserError(f"{max(self.prefill_tokens)} is above {MAX_PREFILL_TOKENS:,} tokens in one prefill "
                            "iteration", field="prefill_tokens")
        self._check_context()
        if not self.phases:
            raise UserError("is empty: use prefill, decode or both", field="phases")
        bad_phases = [p for p in self.phases if p not in ("prefill", "decode")]
        if bad_phases:
            raise UserError(f"{bad_phases[0]!r} is not a phase: use prefill, decode or both", field="phases")
        if not self.decode_configs() and "decode" in self.phases:
            raise UserError("no decode configuration fits the KV cache: lower batch_sizes or kv_per_request")
        if not self.prefill_configs() and "prefill" in self.phases:
            raise UserError("no prefill configuration has as many tokens as sequences: check prefill_tokens and "
                            "prefill_seqs")

    def _check_context(self) -> None:
        """Refuse requests longer than the model's context: the model would measure what no engine serves."""
        ctx = self.max_context
        if ctx is None:
            return
        if max(self.kv_per_request) > ctx:
            raise UserError(f"{max(self.kv_per_request):,} tokens per request is above the model's context of "
                            f"{ctx:,}", field="kv_per_request")
        longest = min(self.prefill_seqs)  # a batch's tokens spread over its sequences; one sequence is the longest
        over = [t for t in self.prefill_tokens if t > ctx * longest]
        if over and "prefill" in self.phases:
            raise UserError(f"{over[0]:,} tokens in {longest} sequence(s) is above the model's context of {ctx:,} "
                            "tokens per sequence: use fewer tokens or more sequences", field="prefill_tokens")

    def decode_configs(self) -> list[tuple[int, int]]:
        """(batch size, KV tokens of the batch), deduplicated, in batch order."""
        out: list[tuple[int, int]] = []
        for b in sorted(set(self.batch_sizes)):
            seen: set[int] = set()
            for per in sorted(set(self.kv_per_request)):
                kv = b * per
                if self.kv_capacity is not None and kv > self.kv_capacity:
                    kv = (self.kv_capacity // b) * b  # fill the cache, keep whole tokens per request
                    if kv < b:
                        continue
                if kv not in seen:
                    seen.add(kv)
                    out.append((b, kv))
        return out

    def prefill_configs(self) -> list[tuple[int, int]]:
        """(batch tokens, sequences) with at least ``MIN_TOKENS_PER_SEQ`` tokens per sequence (one
        sequence: any length)."""
        out = []
        for t in sorted(set(self.prefill_tokens)):
            for n in sorted(set(self.prefill_seqs)):
                if self.max_context is not None and t > n * self.max_context:
                    continue  # a sequence would outgrow the context
                if n == 1 or t >= n * MIN_TOKENS_PER_SEQ:
                    out.append((t, n))
        return out

    @property
    def windows(self) -> int:
        """Timed windows in the whole plan (the progress bar's total)."""
        per_clock = 0
        if "decode" in self.phases:
            per_clock += len(self.decode_configs())
        if "prefill" in self.phases:
            per_clock += len(self.prefill_configs())
        return per_clock * self.repeats * len(self.clocks_mhz)
