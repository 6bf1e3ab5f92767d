"""The request log: what happened to every request and on every instance, the only input of the metrics.

The simulator produces one; the live bench fills the same class from streamed responses. A request's
inter-token latencies (ITLs) are a contiguous run of one *gap stream*: in the simulator each decode
instance's iteration durations form a stream, and a request's ITLs are the ``output_tokens - 1`` iterations
after its admission (weights: how many requests each iteration gave a token); in a live run each request's
own token gaps form its stream (weight 1). So every ITL rule (mean, p99, per-token share over the SLO) is
computed from the log alone, with no per-token Python work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass
class InstanceRecord:
    """Energy, time and clock history of one instance over a run.

    Attributes:
        role: ``"prefill"``, ``"decode"`` or ``"colocated"`` (one instance serving both phases).
        index: the instance's index within its role.
        busy_energy_j, idle_energy_j: energy while running iterations and between them (J).
        busy_s, idle_s: time running iterations and between them (s).
        iterations: iterations run.
        clock_switches: clock changes made.
        clock_busy_s: busy seconds per clock (MHz).
        timeline: ``(time_s, clock_mhz)`` at the start and at each change, when recorded.
        trace: ``(start_s, batch_size, num_tokens, clock_mhz)`` of every iteration, when recorded (the
            batch and tokens as the controller saw them: prefill tokens; decode running requests and KV).
    """

    role: str
    index: int
    busy_energy_j: float = 0.0
    idle_energy_j: float = 0.0
    busy_s: float = 0.0
    idle_s: float = 0.0
    iterations: int = 0
    clock_switches: int = 0
    clock_busy_s: dict[int, float] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    trace: list[tuple[float, int, int, int]] = field(default_factory=list)

    @property
    def energy_j(self) -> float:
        return self.busy_energy_j + self.idle_energy_j


@dataclass
class RequestLog:
    """Per-request outcomes (arrays indexed by request id) and per-instance records.

    Attributes:
        arrival_s, input_tokens, output_tokens: the workload.
        first_token_s: when the first token reached the user (nan: never).
        finish_s: when the last token did (nan: never).
        prefill_instance, decode_instance: where the request ran (-1: nowhere).
        gap_stream: the gap stream holding the request's ITLs (-1: it has none).
        gap_start: index of its first ITL in that stream.
        gap_count: how many ITLs it has (``output_tokens - 1`` once finished). Its ITLs are the stream's
            gaps from ``gap_start`` on, one per gap, except across a pause.
        pauses: ``(request, first gap, last gap)`` rows, one per pause of a request its decode instance
            retracted: the request sat out its stream's gaps from the first up to the one before the last,
            and the last delivered its next token, so those gaps together are one of its ITLs.
        streams: gap durations (s), one array per stream.
        stream_weights: tokens delivered by each gap, one array per stream.
        instances: one record per instance (prefill first, then decode).
        start_s, end_s: the measured span (first arrival to last completion).
        events: events processed (simulator) or responses read (live), for throughput figures of the tool.
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    prefill_instance: np.ndarray
    decode_instance: np.ndarray
    gap_stream: np.ndarray
    gap_start: np.ndarray
    gap_count: np.ndarray
    streams: list[np.ndarray]
    stream_weights: list[np.ndarray]
    instances: list[InstanceRecord]
    start_s: float
    end_s: float
    events: int = 0
    pauses: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))

    @property
    def num_requests(self) -> int:
        return len(self.arrival_s)

    @property
    def ttft_s(self) -> np.ndarray:
        """Time to first token per request (s): first token minus arrival."""
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    def _runs(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per stream holding ITLs: its gaps, the requests whose ITLs it holds, and each one's run
        ``[start, end)`` in it (its pauses included)."""
        cnt = self.gap_count
        span = cnt.copy()
        if len(self.pauses):
            rid, a, b = self.pauses.T
            np.add.at(span, rid, b - a)
        for k, dur in enumerate(self.streams):
            sel = np.flatnonzero((self.gap_stream == k) & (cnt > 0))
            if len(sel):
                s = self.gap_start[sel]
                yield dur, sel, s, s + span[sel]

    @cached_property
    def _pause_gaps(self) -> np.ndarray:
        """Each pause's ITL: the sum of the stream's gaps it spans (s)."""
        if not len(self.pauses):
            return np.zeros(0)
        rid, a, b = self.pauses.T
        return np.array([self.streams[self.gap_stream[r]][i:j + 1].sum() for r, i, j in zip(rid, a, b, strict=True)])

    @cached_property
    def _itl_stats(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.num_requests
        mean = np.full(n, np.nan)
        mx = np.full(n, np.nan)
        for dur, sel, s, e in self._runs():
            c = np.concatenate([[0.0], np.cumsum(dur)])
            mean[sel] = (c[e] - c[s]) / self.gap_count[sel]
            mx[sel] = _segment_max(dur, s, e)  # a pause's gaps are each at most the pause's ITL
        if len(self.pauses):
            np.maximum.at(mx, self.pauses[:, 0], self._pause_gaps)
        return mean, mx

    @property
    def itl_mean_s(self) -> np.ndarray:
        """Mean ITL per request (its TPOT); nan for requests without ITLs."""
        return self._itl_stats[0]

    @property
    def itl_max_s(self) -> np.ndarray:
        """Largest ITL per request; nan for requests without ITLs."""
        return self._itl_stats[1]

    @property
    def token_gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """Every ITL every token saw, as gaps and how many tokens each delivered (for token-weighted ITL
        percentiles): the streams' gaps, less the tokens whose ITL was a pause, and each pause's ITL."""
        if not self.streams:
            return np.zeros(0), np.zeros(0)
        weights = self.stream_weights
        if len(self.pauses):
            weights = [w.copy() for w in weights]
            for r, b in zip(self.pauses[:, 0], self.pauses[:, 2], strict=True):
                weights[self.gap_stream[r]][b] -= 1
        return (np.concatenate([*self.streams, self._pause_gaps]),
                np.concatenate([*weights, np.ones(len(self.pauses))]))

    def itl_violations(self, slo_itl_s: float) -> np.ndarray:
        """Per request, how many of its ITLs exceed ``slo_itl_s`` (a pause is one ITL)."""
        v = np.zeros(self.num_requests, dtype=np.int64)
        for dur, sel, s, e in self._runs():
            c = np.concatenate([[0], np.cumsum(dur > slo_itl_s)])
            v[sel] = c[e] - c[s]
        for (r, a, b), gap in zip(self.pauses, self._pause_gaps, strict=True):
            v[r] += int(gap > slo_itl_s) - int(np.count_nonzero(self.streams[self.gap_stream[r]][a:b + 1] > slo_itl_s))
        return v

    @classmethod
    def from_token_times(
        cls,
        arrival_s: Sequence[float],
        input_tokens: Sequence[int],
        token_times_s: Sequence[Sequence[float]],
        instances: list[InstanceRecord],
        prefill_instance: Sequence[int] | None = None,
        decode_instance: Sequence[int] | None = None,
    ) -> RequestLog:
        """A log from each request's token arrival times, as a client sees them (the live bench).

        Each request's gaps become its own stream of weight 1. A request with no token never got one:
        its first-token and finish times are nan.
        """
        n = len(arrival_s)
        first = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        out = np.zeros(n, dtype=np.int64)
        streams: list[np.ndarray] = []
        for i, times in enumerate(token_times_s):
            t = np.asarray(times, dtype=float)
            out[i] = len(t)
            if len(t):
                first[i], finish[i] = t[0], t[-1]
            streams.append(np.diff(t) if len(t) > 1 else np.zeros(0))
        arr = np.asarray(arrival_s, dtype=float)
        done = finish[np.isfinite(finish)]
        return cls(
            arrival_s=arr, input_tokens=np.asarray(input_tokens, dtype=np.int64), output_tokens=out,
            first_token_s=first, finish_s=finish,
            prefill_instance=np.asarray(prefill_instance if prefill_instance is not None else [-1] * n),
            decode_instance=np.asarray(decode_instance if decode_instance is not None else [-1] * n),
            gap_stream=np.arange(n), gap_start=np.zeros(n, dtype=np.int64),
            gap_count=np.maximum(out - 1, 0), streams=streams, stream_weights=[np.ones(len(s)) for s in streams],
            instances=instances, start_s=float(arr.min()) if n else 0.0,
            end_s=float(done.max()) if len(done) else (float(arr.max()) if n else 0.0),
        )


def _segment_max(dur: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Max of ``dur[s[i]:e[i]]`` per segment (every segment non-empty), with one ``reduceat``."""
    idx = np.empty(2 * len(s), dtype=np.int64)
    idx[0::2] = s
    idx[1::2] = np.minimum(e, len(dur) - 1)
    mx = np.maximum.reduceat(dur, idx)[0::2]
    # reduceat gives dur[s] alone where s == the clipped end: redo the segments that run to the array's end.
    tail = e == len(dur)
    if np.any(tail):
        mx[tail] = [dur[a:].max() for a in s[tail]]
    return mx
