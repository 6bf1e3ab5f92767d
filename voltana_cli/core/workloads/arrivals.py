"""Arrival processes: request arrival times at a mean rate, within a time window or for a number of requests.

- ``poisson``: exponential gaps; ``gamma``: gamma gaps with shape ``burstiness`` (< 1 is burstier, 1 is
  Poisson), like SGLang/vLLM's burstiness; ``constant``: equal gaps;
- ``trace``: a trace's own timestamps, scaled so that their mean rate is the requested one.

Randomness comes only from the caller's ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from voltana_cli.core.errors import UserError

ARRIVALS = ("poisson", "gamma", "constant", "trace")


def arrival_times(
    process: str,
    rate_rps: float,
    rng: np.random.Generator,
    *,
    duration_s: float | None = None,
    num_requests: int | None = None,
    burstiness: float = 1.0,
    trace_arrivals: np.ndarray | None = None,
) -> np.ndarray:
    """Arrival times (s, from 0) of ``process`` at mean rate ``rate_rps``.

    Args:
        process: one of ``ARRIVALS``.
        rate_rps: mean requests per second.
        rng: draws the gaps of ``poisson`` and ``gamma``.
        duration_s: keep arrivals before this time (``num_requests`` takes precedence for the generated
            processes; a ``trace`` applies both).
        num_requests: make exactly this many arrivals.
        burstiness: the gamma shape.
        trace_arrivals: the trace's timestamps, for ``trace``.

    Raises:
        UserError: about ``request_rates``, ``arrival``, ``burstiness``, ``num_prompts`` or ``duration_s``.
    """
    if not (rate_rps > 0 and math.isfinite(rate_rps)):
        raise UserError(f"request rate {rate_rps} must be a number > 0 (requests per second)", field="request_rates")
    if process == "trace":
        return _trace_times(trace_arrivals, rate_rps, duration_s, num_requests)
    if process not in ARRIVALS:
        raise UserError(f"unknown arrival process {process!r}: use one of {', '.join(ARRIVALS)}", field="arrival")
    if process == "gamma" and burstiness <= 0:
        raise UserError(f"{burstiness} must be > 0 (1 = Poisson, < 1 burstier)", field="burstiness")
    gaps = _gap_sampler(process, rate_rps, burstiness, rng)
    if num_requests is not None:
        g = gaps(num_requests)
        return np.cumsum(g) - g[0]
    if duration_s is None:
        raise UserError("give a duration in seconds, or a number of requests instead", field="duration_s")
    # Draw in chunks until the window is covered, so no request is cut off silently.
    chunks: list[np.ndarray] = []
    total = 0.0
    k = int(rate_rps * duration_s * 1.2) + 64
    while True:
        g = gaps(k)
        chunks.append(g)
        total += float(g.sum())
        if total > duration_s:
            break
    g = np.concatenate(chunks)
    t = np.cumsum(g) - g[0]
    return t[t < duration_s]


def _gap_sampler(process: str, rate_rps: float, burstiness: float, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    """``k`` -> ``k`` inter-arrival gaps (s) of ``process``, drawn from ``rng``."""

    def gaps(k: int) -> np.ndarray:
        if process == "poisson":
            return rng.exponential(1.0 / rate_rps, size=k)
        if process == "gamma":
            return rng.gamma(burstiness, 1.0 / (rate_rps * burstiness), size=k)
        return np.full(k, 1.0 / rate_rps)

    return gaps


def _trace_times(
    trace_arrivals: np.ndarray | None, rate_rps: float, duration_s: float | None, num_requests: int | None
) -> np.ndarray:
    """The trace's timestamps from 0, time-scaled to ``rate_rps``, cut to the window and the count."""
    if trace_arrivals is not None and len(trace_arrivals) < 2:
        raise UserError(f"the trace has {len(trace_arrivals)} timestamped request(s); its own arrivals need at least 2 "
                        "(their gaps set the time scale): use a longer trace, or another arrival process",
                        field="dataset_path")
    if trace_arrivals is None:
        raise UserError(
            "trace arrivals need a dataset with timestamps (azure-conv, azure-code, a csv with arrival_s): "
            "choose such a dataset or another arrival process",
            field="arrival",
        )
    t = np.asarray(trace_arrivals, dtype=float)
    span = t[-1] - t[0]
    if span <= 0:
        raise UserError("the trace's timestamps span no time: use poisson arrivals", field="arrival")
    native = (len(t) - 1) / span
    t = (t - t[0]) * (native / rate_rps)
    if duration_s is not None:
        t = t[t < duration_s]
    if num_requests is not None:
        if num_requests > len(t):
            raise UserError(
                f"the trace has {len(t)} requests in the window, fewer than the {num_requests} asked for: "
                f"ask for at most {len(t)}",
                field="num_prompts",
            )
        t = t[:num_requests]
    return t
