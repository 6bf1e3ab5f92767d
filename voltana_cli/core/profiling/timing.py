"""How the measuring backends (torch, sglang) take a profile: the order of measurement (``walk_plan``) and
the timed window (``Timer``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from voltana_cli.core.hardware import ClockGuard, GpuDevice, total_energy_j
from voltana_cli.core.profiling.plan import ProfilePlan

#: Measures one configuration at one clock: ``(clock, a, b) -> one row per repeat`` (prefill: tokens, seqs;
#: decode: batch size, KV tokens).
ConfigRuns = Callable[[int, int, int], Iterator[dict]]


def walk_plan(plan: ProfilePlan, guard: ClockGuard, prefill: ConfigRuns, decode: ConfigRuns,
              on_window: Callable[[str], None] | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[dict]:
    """The measuring backends' walk over a plan.

    Per clock (locked through ``guard``, then the cool-down), every configuration of each profiled phase,
    its repeats back to back.

    Args:
        plan: what to measure.
        guard: locks each clock (or records the request when not locking).
        prefill: measures one prefill configuration.
        decode: measures one decode configuration.
        on_window: told the phase after each row.
        sleep: waits out the cool-down.

    Yields:
        One row dict per timed window.
    """
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

    def window(self, fn: Callable[[], object]) -> Window:
        """Time ``fn``; the energy is per call, ``None`` when there is no counter or it did not advance."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        e0 = total_energy_j(self.gpus)
        t0 = self.now()
        calls = 0
        while True:  # at least one call; more until the window is long enough
            fn()
            calls += 1
            self.sync()
            t1 = self.now()
            if t1 - t0 >= self.min_window_s:
                break
        e1 = total_energy_j(self.gpus)
        energy = None
        if e0 is not None and e1 is not None and e1 > e0:
            energy = (e1 - e0) / calls
        clock = self.gpus[0].sm_clock_mhz() if self.gpus else None
        return Window((t1 - t0) / calls, energy, calls, clock)
