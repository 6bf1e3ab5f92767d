import numpy as np
import pytest
import yaml

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import ClockGuard
from voltana_cli.core.models.ecopred import EcoPred, detect_steps, fit_ecopred
from voltana_cli.core.models.profiled import ProfileModel
from voltana_cli.core.profiling import Profile, ProfilePlan, default_batch_sizes, load_profile, make_frame, run_sim
from voltana_cli.core.report import write_text
from voltana_cli.core.tune import evaluate, load_predictor, tuned_document


@pytest.fixture(scope="module")
def shipped():
    return load_profile("a100-80g-sxm4/llama-3.1-8b")


@pytest.fixture(scope="module")
def report(shipped):
    return evaluate(shipped, holdout=0.2, seed=0, compare_gbt=False)


def test_held_out_accuracy_meets_the_targets(report):
    """3 % measurement noise alone costs ~2.4 % MAPE; the targets are 3.5 % (decode) and 5 % (prefill), worst clock."""
    dec = report.accuracy["decode"]
    pre = report.accuracy["prefill"]
    assert len(dec) == 8 and len(pre) == 8
    assert max(v["mape_pct"] for v in dec.values()) <= 3.5
    assert max(v["mape_pct"] for v in pre.values()) <= 5.0
    assert min(v["mape_pct"] for v in dec.values()) >= 1.5  # scored against noisy rows, not the truth
    assert all(v["r2"] > 0.98 for v in [*dec.values(), *pre.values()])


def test_step_detector_finds_the_models_steps(a100_8b, report):
    t0 = np.array(a100_8b.decode_table(1410).t0)
    sizes = default_batch_sizes(1024, 160)
    true_rel = {b: (t0[b + 1] - t0[b]) / t0[b] for b in sizes if b + 1 in sizes}
    found = {s["after_batch"] for s in report.predictor.info["steps"]}
    big = {b for b, r in true_rel.items() if r >= 0.025}
    assert {128, 160, 256, 384, 512} <= big  # tile steps, the largest CUDA graph
    assert big <= found
    flat = {b for b, r in true_rel.items() if r < 0.005}
    assert not (found & flat)


def synthetic(step_at=None, noise=0.03, seed=1):
    """Decode latency linear in batch and KV at two clocks, with an optional step."""
    rng = np.random.default_rng(seed)
    rows = []
    for clock, scale in ((1005, 1.1), (1410, 1.0)):
        for b in default_batch_sizes(256):
            for kv in (64 * b, 512 * b):
                for r in range(3):
                    t = scale * (10 + 0.05 * b + 1e-4 * kv + (3.0 if step_at and b > step_at else 0.0))
                    t *= np.exp(noise * rng.standard_normal())
                    rows.append(dict(phase="decode", clock_mhz=clock, batch_size=b, num_tokens=kv, latency_ms=t,
                                     energy_j=np.nan, power_w=np.nan, repeat=r))
    return make_frame(rows)


def test_no_steps_in_a_smooth_profile_and_the_injected_one_found():
    assert detect_steps(synthetic()) == []
    steps = detect_steps(synthetic(step_at=96))
    assert [s.after for s in steps] == [96]
    assert steps[0].clocks_seen == 2 and steps[0].jump_ms == pytest.approx(3.0, rel=0.3)


def test_yaml_round_trip_predicts_identically(tmp_path, report):
    path = tmp_path / "tuned.yaml"
    write_text(path, yaml.safe_dump(tuned_document(report, 0.2), sort_keys=False))
    back = load_predictor(path)
    p = report.predictor
    for b, kv, c in ((1, 100, 1410), (129, 50_000, 1005), (700, 300_000, 885), (37, 9000, 1100)):
        assert back.decode_s(b, kv, c) == pytest.approx(p.decode_s(b, kv, c), rel=1e-7)
        assert back.decode_j(b, kv, c) == pytest.approx(p.decode_j(b, kv, c), rel=1e-7)
    for t, n, c in ((64, 1, 1410), (3000, 3, 1005), (8000, 12, 780)):
        assert back.prefill_s(t, n, c) == pytest.approx(p.prefill_s(t, n, c), rel=1e-7)
    assert back.info["steps"] == p.info["steps"]


def test_interpolates_between_clocks_and_refuses_to_extrapolate(report):
    p = report.predictor
    lo, mid, hi = p.decode_s(64, 20_000, 1005), p.decode_s(64, 20_000, 1050), p.decode_s(64, 20_000, 1095)
    assert min(lo, hi) <= mid <= max(lo, hi)
    assert p.prefill_s(4096, 2, 1305) < p.prefill_s(4096, 2, 1200) < p.prefill_s(4096, 2, 1095)
    with pytest.raises(UserError, match="cannot extrapolate to 1500 MHz"):
        p.decode_s(8, 100, 1500)


def test_predictor_tracks_the_noise_free_model(a100_8b, report):
    p = report.predictor
    for b, kv in ((1, 200), (64, 30_000), (128, 60_000), (129, 60_000), (300, 150_000)):
        truth = a100_8b.decode_cost(b, kv, 1410)[0]
        assert p.decode_s(b, kv, 1410) == pytest.approx(truth, rel=0.03)


def test_bad_predictor_files(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("schema: something-else\n")
    with pytest.raises(UserError, match="is not 'voltana.tuned/3'"):
        load_predictor(f)
    f.write_text("schema: voltana.tuned/2\npredictor: {schema: voltana.ecopred/1, decode: {segments: [[1, 2]]}}\n")
    with pytest.raises(UserError, match="malformed 'decode'"):
        load_predictor(f)
    with pytest.raises(UserError, match="no such file"):
        load_predictor(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="schema"):
        EcoPred.from_dict({"schema": "x"})


def test_profile_as_ground_truth_matches_the_model_it_came_from(a100_8b):
    plan = ProfilePlan((1005, 1410), tuple(default_batch_sizes(512, 160)), kv_capacity=a100_8b.kv_capacity_tokens,
                       repeats=1)
    with ClockGuard([], lock=False) as g:
        df = make_frame(list(run_sim(plan, a100_8b, g, 0.0, np.random.default_rng(0))))
    prof = load_profile("a100-80g-sxm4/llama-3.1-8b")
    truth = ProfileModel(Profile(df, prof.meta, "noise-free"), a100_8b)
    for c in (1005, 1410):
        # At profiled batch sizes the interpolant is the table; between them (400: between 385 and 512) it is
        # a chord of the model's convex roofline, a few per cent high.
        for b, kv, tol in ((1, 64, 0.01), (16, 4096, 0.01), (128, 131_072, 0.01), (129, 132_096, 0.01),
                           (161, 41_216, 0.01), (400, 100_000, 0.04)):
            want = a100_8b.decode_cost(b, kv, c)
            got = truth.decode_cost(b, kv, c)
            assert got[0] == pytest.approx(want[0], rel=tol) and got[1] == pytest.approx(want[1], rel=tol)
        for t, n in ((64, 1), (1000, 4), (6000, 12)):
            assert truth.prefill_cost(t, c, n)[0] == pytest.approx(a100_8b.prefill_cost(t, c, n)[0], rel=0.03)
    with pytest.raises(UserError, match="covers 1005-1410 MHz"):
        truth.decode_table(990)
    # Predictions of a profile fitted without the truth's own rows never read the truth.
    pred, _ = fit_ecopred(Profile(df, prof.meta))
    assert pred.decode_s(128, 131_072, 1410) == pytest.approx(a100_8b.decode_cost(128, 131_072, 1410)[0], rel=0.03)
