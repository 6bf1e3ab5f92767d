"""Metrics of a run, computed from its ``RequestLog`` alone: latency percentiles, SLO attainment, energy,
throughput. A simulated and a live run are measured by this same code.

ITL attainment rule (default, ``mean``): a request meets the ITL SLO when the mean of its inter-token
latencies (its TPOT) is within the SLO. Two variants are reported beside it: ``per_token`` (the share of
all inter-token gaps within the SLO) and ``p99`` (a request passes when at most 1 % of its gaps exceed the
SLO). TTFT attainment: TTFT within the SLO. ``both``: a request meets both (TTFT and the mean-ITL rule).
Requests with a single output token have no ITL and count as meeting the ITL SLO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from voltana_cli.core.metrics.log import RequestLog

ITL_RULE = "mean ITL per request <= ITL SLO (variants: per-token share, p99 per request)"


@dataclass(frozen=True)
class Summary:
    num_requests: int
    duration_s: float
    energy_j: dict[str, float]
    joules_per_output_token: float
    joules_per_request: float
    attainment: dict[str, float]
    attainment_variants: dict[str, float]
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    tpot_ms: dict[str, float]
    e2e_ms: dict[str, float]
    throughput: dict[str, float]
    instances: list[dict]

    def as_dict(self) -> dict:
        return {
            "num_requests": self.num_requests,
            "duration_s": self.duration_s,
            "energy_j": self.energy_j,
            "joules_per_output_token": self.joules_per_output_token,
            "joules_per_request": self.joules_per_request,
            "attainment": self.attainment,
            "attainment_variants": self.attainment_variants,
            "ttft_ms": self.ttft_ms,
            "itl_ms": self.itl_ms,
            "tpot_ms": self.tpot_ms,
            "e2e_ms": self.e2e_ms,
            "throughput": self.throughput,
            "instances": self.instances,
        }


def _pct(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _weighted_pct(x: np.ndarray, w: np.ndarray) -> dict[str, float]:
    if len(x) == 0 or w.sum() <= 0:
        return _pct(np.zeros(0))
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    cw = np.cumsum(ws) / ws.sum()
    q = {k: float(xs[min(int(np.searchsorted(cw, p)), len(xs) - 1)])
         for k, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
    return {"mean": float((x * w).sum() / w.sum()), **q}


def summarize(res: RequestLog, slo_ttft_s: float, slo_itl_s: float) -> Summary:
    """Summarise one run against its SLOs (see the module docstring for the rules)."""
    n = res.num_requests
    ttft = res.ttft_s
    has_itl = res.gap_count > 0
    ttft_ok = ttft <= slo_ttft_s
    itl_ok = ~has_itl | (res.itl_mean_s <= slo_itl_s)
    viol = res.itl_violations(slo_itl_s)
    p99_ok = viol <= np.floor(0.01 * res.gap_count)
    tokens = res.gap_count.sum()
    per_token = 1.0 - viol.sum() / tokens if tokens else 1.0
    out_tokens = int(res.output_tokens.sum())
    dur = max(res.end_s - res.start_s, 1e-9)
    prefill_busy = sum(s.busy_energy_j for s in res.instances if s.role == "prefill")
    decode_busy = sum(s.busy_energy_j for s in res.instances if s.role == "decode")
    mixed_busy = sum(s.busy_energy_j for s in res.instances if s.role == "colocated")
    idle = sum(s.idle_energy_j for s in res.instances)
    total = prefill_busy + decode_busy + mixed_busy + idle
    both = ttft_ok & itl_ok
    e2e = res.e2e_s
    gaps, weights = res.token_gaps
    return Summary(
        num_requests=n,
        duration_s=dur,
        # A colocated layout's instances run both phases in one batch: their busy energy is its own entry.
        energy_j={"total": total, "prefill": prefill_busy, "decode": decode_busy, "idle": idle,
                  **({"colocated": mixed_busy} if any(s.role == "colocated" for s in res.instances) else {})},
        joules_per_output_token=total / max(out_tokens, 1),
        joules_per_request=total / max(n, 1),
        attainment={"ttft": float(ttft_ok.mean()), "itl": float(itl_ok.mean()), "both": float(both.mean())},
        attainment_variants={"itl_per_token": float(per_token), "itl_p99": float(p99_ok.mean())},
        ttft_ms=_scale(_pct(ttft)),
        itl_ms=_scale(_weighted_pct(gaps, weights)),
        tpot_ms=_scale(_pct(res.itl_mean_s)),
        e2e_ms=_scale(_pct(e2e)),
        throughput={
            "requests_per_s": n / dur,
            "output_tokens_per_s": out_tokens / dur,
            "goodput_requests_per_s": float(both.sum()) / dur,
        },
        instances=[
            {
                "role": s.role, "index": s.index, "energy_j": s.energy_j, "busy_energy_j": s.busy_energy_j,
                "idle_energy_j": s.idle_energy_j, "busy_s": s.busy_s, "iterations": s.iterations,
                "clock_switches": s.clock_switches,
                "busy_s_by_clock_mhz": {str(k): v for k, v in sorted(s.clock_busy_s.items())},
            }
            for s in res.instances
        ],
    )


def _scale(d: dict[str, float]) -> dict[str, float]:
    return {k: v * 1e3 for k, v in d.items()}


def request_frame(res: RequestLog) -> pd.DataFrame:
    """One row per request: where it ran and its latencies (ms)."""
    return pd.DataFrame({
        "request_id": np.arange(res.num_requests),
        "arrival_s": res.arrival_s,
        "input_tokens": res.input_tokens,
        "output_tokens": res.output_tokens,
        "prefill_instance": res.prefill_instance,
        "decode_instance": res.decode_instance,
        "ttft_ms": res.ttft_s * 1e3,
        "tpot_ms": res.itl_mean_s * 1e3,
        "itl_max_ms": res.itl_max_s * 1e3,
        "e2e_ms": res.e2e_s * 1e3,
    })
