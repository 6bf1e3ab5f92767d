"""Running a profile: the plan (which configurations), the timing protocol, and the ``sim`` backend.

A plan is a grid: clocks x decode (batch size, KV tokens) x prefill (batch tokens, sequences) x repeats.
The default decode batch sizes sample both sides of every multiple of 8 up to 256 and of 128 above
(1, 2, 4, 8, 9, 16, 17, ..., 256, 257, 384, 385, ...), so a step at any of those boundaries (CUDA-graph
padding, GEMM tiles, the largest captured graph) shows up as a jump between two neighbours; that is what
EcoPred's boundary detector reads. It is the paper's 46-size grid made denser.

Backends yield one row dict per timed window; the command collects them into a ``Profile``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware.gpu import ClockGuard, GpuDevice
from voltana_cli.core.models.analytical import PerfModel, prefill_pairs

DEFAULT_KV_PER_REQUEST = (64, 256, 1024)
DEFAULT_PREFILL_TOKENS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_PREFILL_SEQS = (1, 2, 3, 4, 6, 8, 12, 16)
#: Shortest prompt a multi-sequence prefill configuration uses (tokens per sequence).
MIN_TOKENS_PER_SEQ = 16


def default_batch_sizes(max_batch: int = 1024, graph_max: int | None = None) -> list[int]:
    """1, 2, 4, then (8k, 8k+1) up to 257, then (128k, 128k+1) up to ``max_batch``; plus the largest
    CUDA-graph batch and the one above it."""
    sizes = {1, 2, 4}
    for b in range(8, min(256, max_batch) + 1, 8):
        sizes.update((b, b + 1))
    for b in range(384, max_batch + 1, 128):
        sizes.update((b, b + 1))
    if graph_max:
        sizes.update((graph_max, graph_max + 1))
    return sorted(s for s in sizes if s <= max_batch + 1)


def default_clocks(clocks: list[int], levels: tuple[int, ...] = ()) -> list[int]:
    """Every supported clock from half the maximum up, 105 MHz apart (A100: 780 ... 1410), plus ``levels``."""
    top = clocks[-1]
    step = 105
    picked = {c for c in clocks if c >= top / 2 and (top - c) % step == 0}
    if len(picked) < 2:  # a GPU whose clock step does not divide 105: take 7 evenly spaced clocks
        upper = [c for c in clocks if c >= top / 2]
        picked = {upper[int(round(i))] for i in np.linspace(0, len(upper) - 1, 7)}
    picked.update(c for c in levels if c in clocks)
    return sorted(picked)


@dataclass(frozen=True)
class ProfilePlan:
    """What to measure. Decode KV tokens are ``batch * kv_per_request``, capped at ``kv_capacity``."""

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

    def __post_init__(self) -> None:
        def positive(name: str, vals: tuple[int, ...]) -> None:
            if not vals:
                raise UserError(f"--{name.replace('_', '-')} is empty: give at least one value")
            bad = [v for v in vals if v <= 0]
            if bad:
                raise UserError(f"--{name.replace('_', '-')} has {bad[0]}: every value must be > 0")

        positive("clocks", self.clocks_mhz)
        positive("batch_sizes", self.batch_sizes)
        positive("kv_per_request", self.kv_per_request)
        positive("prefill_tokens", self.prefill_tokens)
        positive("prefill_seqs", self.prefill_seqs)
        if self.repeats < 1:
            raise UserError(f"--repeats {self.repeats}: measure each configuration at least once")
        if self.warmup < 0 or self.cooldown_s < 0 or self.min_window_s < 0:
            raise UserError("--warmup, --cooldown-s and --min-window-s must be >= 0")
        bad = [p for p in self.phases if p not in ("prefill", "decode")]
        if bad or not self.phases:
            raise UserError(f"--phases {','.join(self.phases)}: use prefill, decode or both")
        if not self.decode_configs() and "decode" in self.phases:
            raise UserError("no decode configuration fits the KV cache: lower --batch-sizes or --kv-per-request")
        if not self.prefill_configs() and "prefill" in self.phases:
            raise UserError("no prefill configuration has as many tokens as sequences: check --prefill-tokens/--prefill-seqs")

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


def window_row(phase: str, clock: int, b: int, tokens: int, lat_s: float, energy_j: float | None, r: int) -> dict:
    ok = energy_j is not None and math.isfinite(energy_j) and energy_j > 0
    return {
        "phase": phase, "clock_mhz": int(clock), "batch_size": int(b), "num_tokens": int(tokens),
        "latency_ms": lat_s * 1e3, "energy_j": energy_j if ok else math.nan,
        "power_w": energy_j / lat_s if ok else math.nan, "repeat": r,
    }


# ---- sim --------------------------------------------------------------------------------------------------
def run_sim(
    plan: ProfilePlan,
    model: PerfModel,
    guard: ClockGuard,
    noise: float,
    rng: np.random.Generator,
    on_window: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """Rows from the analytical model with lognormal measurement noise: latency gets ``noise`` and energy
    an independent half of it on top (power is measured more steadily than time)."""
    if noise < 0 or noise > 0.5:
        raise UserError(f"--noise {noise}: use a relative noise between 0 and 0.5 (e.g. 0.03 for 3 %)")
    for c in plan.clocks_mhz:
        model.check_clock(c)
    for clock in plan.clocks_mhz:
        guard.set(clock)
        for r in range(plan.repeats):
            if "prefill" in plan.phases:
                for t, n in plan.prefill_configs():
                    lat, en = model.prefill_cost(t, clock, n, prefill_pairs(t, n))
                    yield _noisy("prefill", clock, n, t, lat, en, r, noise, rng)
                    if on_window:
                        on_window("prefill")
            if "decode" in plan.phases:
                for b, kv in plan.decode_configs():
                    if b > model.max_batch:
                        raise UserError(f"--batch-sizes {b} is above the modelled maximum {model.max_batch}")
                    lat, en = model.decode_cost(b, kv, clock)
                    yield _noisy("decode", clock, b, kv, lat, en, r, noise, rng)
                    if on_window:
                        on_window("decode")


def _noisy(phase: str, clock: int, b: int, tokens: int, lat: float, en: float, r: int, noise: float,
           rng: np.random.Generator) -> dict:
    if noise > 0:
        et = math.exp(noise * rng.standard_normal() - 0.5 * noise * noise)
        ep = math.exp(0.5 * noise * rng.standard_normal() - 0.125 * noise * noise)
    else:
        et = ep = 1.0
    return window_row(phase, clock, b, tokens, lat * et, en * et * ep, r)


# ---- real backends: the order of measurement and the timing protocol ---------------------------------------
#: Measures one configuration at one clock: ``(clock, a, b) -> one row per repeat`` (prefill: tokens, seqs;
#: decode: batch size, KV tokens).
ConfigRuns = Callable[[int, int, int], Iterator[dict]]


def walk_plan(plan: ProfilePlan, guard: ClockGuard, prefill: ConfigRuns, decode: ConfigRuns,
              on_window: Callable[[str], None] | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[dict]:
    """The real backends' walk: per clock (locked through ``guard``, then the cool-down), every configuration
    of each profiled phase, its repeats back to back."""
    for clock in plan.clocks_mhz:
        guard.set(clock)
        if plan.cooldown_s > 0:
            sleep(plan.cooldown_s)
        for phase, configs, runs in (("prefill", plan.prefill_configs(), prefill),
                                     ("decode", plan.decode_configs(), decode)):
            if phase not in plan.phases:
                continue
            for a, b in configs:
                for row in runs(clock, a, b):
                    yield row
                    if on_window:
                        on_window(phase)


# ---- timing protocol for real backends ---------------------------------------------------------------------
@dataclass
class Window:
    """One timed window: mean latency per call and energy per call (None: no counter / no update)."""

    latency_s: float
    energy_j: float | None
    calls: int
    clock_mhz: int | None = None


@dataclass
class Timer:
    """Times ``fn`` over a window: ``warmup`` untimed calls, then calls until ``min_window_s`` has passed
    (at least one), so that an energy counter that updates every 20-100 ms covers enough of the window.
    ``sync`` waits for queued device work (``torch.cuda.synchronize``)."""

    gpus: list[GpuDevice] = field(default_factory=list)
    min_window_s: float = 0.0
    warmup: int = 1
    sync: Callable[[], None] = lambda: None
    now: Callable[[], float] = time.perf_counter

    def _energy(self) -> float | None:
        if not self.gpus:
            return None
        vals = [g.energy_j() for g in self.gpus]
        return None if any(v is None for v in vals) else float(sum(vals))  # type: ignore[arg-type]

    def window(self, fn: Callable[[], object]) -> Window:
        for _ in range(self.warmup):
            fn()
        self.sync()
        e0 = self._energy()
        t0 = self.now()
        calls = 0
        while True:  # at least one call; more until the window is long enough
            fn()
            calls += 1
            self.sync()
            t1 = self.now()
            if t1 - t0 >= self.min_window_s:
                break
        e1 = self._energy()
        energy = None
        if e0 is not None and e1 is not None and e1 > e0:
            energy = (e1 - e0) / calls
        clock = self.gpus[0].sm_clock_mhz() if self.gpus else None
        return Window((t1 - t0) / calls, energy, calls, clock)
