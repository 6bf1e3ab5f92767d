"""Metrics computed from hand-built request logs: every figure from the log alone."""

from __future__ import annotations

import numpy as np
import pytest

from voltana_cli.core.metrics import InstanceRecord, RequestLog, request_frame, summarize


def live_log() -> RequestLog:
    """Three requests as a client sees them: token arrival times (s)."""
    return RequestLog.from_token_times(
        arrival_s=[0.0, 1.0, 2.0],
        input_tokens=[10, 20, 30],
        token_times_s=[
            [0.5, 0.52, 0.54, 0.56],  # TTFT 0.5, ITLs 20 ms
            [1.2, 1.3, 1.32],  # TTFT 0.2, ITLs 100 ms then 20 ms (mean 60 ms)
            [3.5],  # TTFT 1.5, one token: no ITL
        ],
        instances=[InstanceRecord("prefill", 0, busy_energy_j=30.0, idle_energy_j=5.0),
                   InstanceRecord("decode", 0, busy_energy_j=50.0, idle_energy_j=15.0)],
    )


def test_ttft_itl_and_attainment_from_token_times():
    log = live_log()
    np.testing.assert_allclose(log.ttft_s, [0.5, 0.2, 1.5])
    np.testing.assert_allclose(log.itl_mean_s[:2], [0.02, 0.06])
    assert np.isnan(log.itl_mean_s[2])
    np.testing.assert_allclose(log.itl_max_s[:2], [0.02, 0.1])
    s = summarize(log, slo_ttft_s=0.8, slo_itl_s=0.05)
    # TTFT: requests 0 and 1 within 0.8 s. ITL (mean rule): request 0 yes, 1 no (60 ms), 2 has none (counts).
    assert s.attainment == pytest.approx({"ttft": 2 / 3, "itl": 2 / 3, "both": 1 / 3})
    # Per-token share: 4 of 5 gaps within 50 ms. p99 rule: request 1 has 1 of 2 gaps over, more than 1 %.
    assert s.attainment_variants == pytest.approx({"itl_per_token": 4 / 5, "itl_p99": 2 / 3})


def test_energy_and_throughput_from_instance_records():
    s = summarize(live_log(), 0.8, 0.05)
    assert s.energy_j == {"total": 100.0, "prefill": 30.0, "decode": 50.0, "idle": 20.0}
    assert s.duration_s == pytest.approx(3.5)
    assert s.joules_per_output_token == pytest.approx(100.0 / 8)
    assert s.throughput["output_tokens_per_s"] == pytest.approx(8 / 3.5)
    assert s.throughput["goodput_requests_per_s"] == pytest.approx(1 / 3.5)


def test_simulator_shaped_log_shares_one_stream_between_requests():
    """Two requests on one decode instance: a stream of iteration durations, weights = batch sizes."""
    dur = np.array([0.01, 0.02, 0.03, 0.08, 0.01])
    log = RequestLog(
        arrival_s=np.array([0.0, 0.0]), input_tokens=np.array([5, 5]), output_tokens=np.array([4, 3]),
        first_token_s=np.array([0.1, 0.11]), finish_s=np.array([0.16, 0.24]),
        prefill_instance=np.array([0, 0]), decode_instance=np.array([0, 0]),
        gap_stream=np.array([0, 0]), gap_start=np.array([0, 2]), gap_count=np.array([3, 2]),
        streams=[dur], stream_weights=[np.array([1.0, 2.0, 2.0, 1.0, 0.0])],
        instances=[InstanceRecord("decode", 0)], start_s=0.0, end_s=0.24,
    )
    np.testing.assert_allclose(log.itl_mean_s, [0.02, 0.055])
    np.testing.assert_allclose(log.itl_max_s, [0.03, 0.08])  # the second runs to the stream's end but one
    np.testing.assert_array_equal(log.itl_violations(0.05), [0, 1])
    s = summarize(log, 1.0, 0.05)
    assert s.attainment["itl"] == 0.5
    # Token-weighted ITL percentiles: weights count tokens, not iterations.
    assert s.itl_ms["mean"] == pytest.approx(1e3 * (0.01 + 0.04 + 0.06 + 0.08) / 6)


def test_a_retracted_requests_pause_is_one_itl():
    """Request 0 gets tokens from gaps 0 and 1, sits out gaps 2-3 (retracted) and resumes in gap 4: three ITLs,
    the last of them the pause (gaps 2-4 together, 0.08 s). Request 1 gets a token from every gap. The pause is
    one ITL in the mean, the max, the violation count and the token-weighted percentiles."""
    dur = np.array([0.01, 0.02, 0.03, 0.03, 0.02])
    log = RequestLog(
        arrival_s=np.zeros(2), input_tokens=np.array([5, 5]), output_tokens=np.array([4, 6]),
        first_token_s=np.zeros(2), finish_s=np.array([0.11, 0.11]),
        prefill_instance=np.zeros(2, dtype=np.int64), decode_instance=np.zeros(2, dtype=np.int64),
        gap_stream=np.zeros(2, dtype=np.int64), gap_start=np.array([0, 0]), gap_count=np.array([3, 5]),
        streams=[dur], stream_weights=[np.array([2.0, 2.0, 1.0, 1.0, 2.0])],
        instances=[InstanceRecord("decode", 0)], start_s=0.0, end_s=0.11, pauses=np.array([[0, 2, 4]]),
    )
    np.testing.assert_allclose(log.itl_mean_s, [0.11 / 3, 0.11 / 5])
    np.testing.assert_allclose(log.itl_max_s, [0.08, 0.03])
    np.testing.assert_array_equal(log.itl_violations(0.05), [1, 0])
    np.testing.assert_array_equal(log.itl_violations(0.025), [1, 2])  # request 0: the pause, not gaps 2 and 3
    gaps, weights = log.token_gaps
    assert weights.sum() == log.gap_count.sum()  # one weight per token
    np.testing.assert_allclose(np.sort(np.repeat(gaps, weights.astype(int))),
                               np.sort([0.01, 0.02, 0.08, 0.01, 0.02, 0.03, 0.03, 0.02]))


def test_segment_max_at_the_end_of_a_stream():
    dur = np.array([0.01, 0.09, 0.02])
    log = RequestLog(
        arrival_s=np.zeros(2), input_tokens=np.ones(2, dtype=np.int64), output_tokens=np.array([2, 3]),
        first_token_s=np.zeros(2), finish_s=np.ones(2), prefill_instance=np.zeros(2), decode_instance=np.zeros(2),
        gap_stream=np.zeros(2, dtype=np.int64), gap_start=np.array([2, 1]), gap_count=np.array([1, 2]),
        streams=[dur], stream_weights=[np.ones(3)], instances=[], start_s=0.0, end_s=1.0,
    )
    np.testing.assert_allclose(log.itl_max_s, [0.02, 0.09])


def test_request_frame_has_one_row_per_request_in_ms():
    df = request_frame(live_log())
    assert list(df["request_id"]) == [0, 1, 2]
    np.testing.assert_allclose(df["ttft_ms"], [500.0, 200.0, 1500.0])
    np.testing.assert_allclose(df["e2e_ms"], [560.0, 320.0, 1500.0])


def test_a_request_that_never_got_a_token_fails_every_slo():
    log = RequestLog.from_token_times([0.0, 1.0], [1, 1], [[0.1, 0.12], []], instances=[])
    s = summarize(log, 0.8, 0.05)
    assert s.attainment["ttft"] == 0.5 and s.attainment["both"] == 0.5
