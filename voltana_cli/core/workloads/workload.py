"""A workload: requests ``(arrival_s, input_tokens, output_tokens)`` held as numpy arrays, and how one is built.

``build_workload`` pairs arrival times (``arrivals``) with token lengths from a dataset (``datasets``).
Everything is seeded through a ``numpy.random.Generator`` owned by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from voltana_cli.core.errors import UserError
from voltana_cli.core.workloads.arrivals import arrival_times
from voltana_cli.core.workloads.traces import LengthTrace


@dataclass(frozen=True)
class Workload:
    """Requests sorted by arrival time. Arrays share one length."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("workload arrays differ in length")

    def __len__(self) -> int:
        return len(self.arrival_s)


def build_workload(
    lengths: LengthTrace,
    process: str,
    rate_rps: float,
    rng: np.random.Generator,
    *,
    duration_s: float | None = None,
    num_requests: int | None = None,
    burstiness: float = 1.0,
) -> Workload:
    """Pair arrival times with token lengths drawn from ``lengths``.

    For ``trace`` arrivals the trace's rows stay in order; otherwise rows are drawn in a seeded random
    order without replacement, cycling through the dataset if more requests are needed than it holds.

    Args:
        lengths: the dataset's token lengths (and, for ``trace``, its timestamps).
        process: the arrival process, one of ``ARRIVALS``.
        rate_rps: mean requests per second.
        rng: draws the arrivals, then the order of the rows.
        duration_s: seconds of arrivals; ignored for generated processes when ``num_requests`` is given.
        num_requests: the number of requests.
        burstiness: the gamma process's shape.

    Raises:
        UserError: about ``duration_s`` or ``num_prompts`` (neither given, or not > 0), or what
            ``arrival_times`` rejects.
    """
    if duration_s is None and num_requests is None:
        raise UserError("give a duration in seconds, or a number of requests instead", field="duration_s")
    if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
        raise UserError(f"{duration_s} must be a number > 0 (seconds of arrivals)", field="duration_s")
    if num_requests is not None and num_requests <= 0:
        raise UserError(f"{num_requests} must be > 0 (a number of requests)", field="num_prompts")
    t = arrival_times(
        process, rate_rps, rng, duration_s=duration_s, num_requests=num_requests,
        burstiness=burstiness, trace_arrivals=lengths.arrival_s,
    )
    n = len(t)
    if process == "trace":
        idx = np.arange(n)
    else:
        reps = -(-n // len(lengths)) if n else 0
        idx = np.concatenate([rng.permutation(len(lengths)) for _ in range(max(reps, 1))])[:n]
    return Workload(
        arrival_s=np.asarray(t, dtype=float),
        input_tokens=lengths.input_tokens[idx].astype(np.int64),
        output_tokens=lengths.output_tokens[idx].astype(np.int64),
        name=lengths.name,
        notes=lengths.notes,
    )
