import json

import pytest
import yaml

from tests.test_cli import invoke
from voltana_cli.core.profiling import load_profile
from voltana_cli.core.tune import load_predictor

SMALL = ["--clocks", "1005,1410", "--batch-sizes", "1,8,9,16,17,32,64,128,129,160,161,256",
         "--prefill-tokens", "64,256,1024,4096", "--prefill-seqs", "1,2,4"]


@pytest.fixture(scope="module")
def small_profile(tmp_path_factory):
    d = tmp_path_factory.mktemp("prof") / "p"
    r = invoke("profile", "--backend", "sim", "--gpu", "a100-80g-sxm4", "--model", "llama-3.1-8b", "--out", str(d), *SMALL)
    assert r.exit_code == 0, r.output
    return d, r.output


def test_profile_sim_writes_a_valid_profile_and_a_summary(small_profile):
    d, out = small_profile
    prof = load_profile(d)
    assert prof.clocks_mhz == [1005, 1410]
    assert prof.meta.backend == "sim" and prof.meta.clocks_locked and prof.meta.protocol.repeats == 3
    assert prof.meta.gpu == "a100-80g-sxm4" and prof.meta.model == "llama-3.1-8b"
    assert 1410 in prof.meta.clocks_available_mhz
    assert set(prof.data["repeat"]) == {0, 1, 2}
    for needle in ("voltana profile", "clocks locked", "energy/token mJ", "wrote"):
        assert needle in out


def test_tune_fit_only_json_and_tuned_yaml(small_profile, tmp_path):
    d, _ = small_profile
    j, y = tmp_path / "acc.json", tmp_path / "tuned.yaml"
    r = invoke("tune", "--fit-only", "--profile", str(d), "--out", str(y), "--json", str(j), "--no-compare-gbt")
    assert r.exit_code == 0, r.output
    acc = json.loads(j.read_text())
    for phase in ("prefill", "decode"):
        assert set(acc[phase]) == {"1005", "1410"}
        for figs in acc[phase].values():
            assert {"mae_ms", "mape_pct", "r2"} <= set(figs)
            assert 0 < figs["mape_pct"] < 10
    assert any(s["after_batch"] == 128 for s in acc["steps"])
    doc = yaml.safe_load(y.read_text())
    assert doc["schema"] == "voltana.tuned/3" and doc["predictor"]["schema"] == "voltana.ecopred/1"
    assert load_predictor(y).clocks_mhz == [1005, 1410]
    assert "MAPE %" in r.output and "decode steps found" in r.output


def test_bench_on_a_profile_with_its_fitted_predictor(small_profile, tmp_path):
    d, _ = small_profile
    y = tmp_path / "tuned.yaml"
    assert invoke("tune", "--fit-only", "--profile", str(d), "--out", str(y), "--no-compare-gbt").exit_code == 0
    j = tmp_path / "b.json"
    r = invoke("bench", "--profile", str(d), "--predictor", str(y), "--duration-s", "5", "--request-rate", "20",
               "--json", str(j))
    assert r.exit_code == 0, r.output
    rep = json.loads(j.read_text())
    assert rep["config"]["ground_truth"].startswith("profile ")
    assert rep["config"]["predictor_used"].startswith("EcoPred from")
    vol = next(x for x in rep["runs"] if x["policy"] == "voltana")
    assert vol["saving_vs_static_max"] > 0.1


@pytest.mark.parametrize("args, needle", [
    (["profile", "--backend", "gpu-magic"], "--backend: 'gpu-magic' is not a backend"),
    (["profile", "--clocks", "1005,fast"], "--clocks '1005,fast'"),
    (["profile", "--clocks", "1007"], "does not support 1007 MHz"),
    (["profile", "--repeats", "0"], "--repeats: 0 is below 1"),
    (["profile", "--noise", "2"], "--noise: 2.0 is out of range"),
    (["profile", "--phases", "warmup"], "--phases: 'warmup' is not a phase"),
    (["profile", "--batch-sizes", "0"], "--batch-sizes: has 0"),
    (["profile", "--batch-sizes", "5000", "--kv-per-request", "16"], "--batch-sizes: 5000 is above the modelled maximum"),
    (["profile", "--cooldown-s", "-1"], "--cooldown-s: -1.0 is out of range"),
    (["profile", "--backend", "torch", "--gpu", "a100-80g-sxm4"], "--gpu: is for the sim backend"),
    (["tune"], "--out: give the tuned config's path"),
    (["tune", "--fit-only", "--profile", "nowhere/none"], "profile 'nowhere/none' not found"),
    (["tune", "--fit-only", "--holdout", "1.5"], "--holdout: 1.5"),
    (["bench", "--profile", "h100-80g-sxm/llama-3.1-8b"], "--profile: it is for h100-80g-sxm x llama-3.1-8b"),
    (["bench", "--predictor", "missing.yaml"], "missing.yaml: no such file"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("error:")]) == 1


def test_profile_refuses_to_overwrite_without_force(small_profile, tmp_path):
    d, _ = small_profile
    r = invoke("profile", "--out", str(d), *SMALL)
    assert r.exit_code == 2 and f"--force: is needed to replace the profile in {d}" in r.output
    before = (d / "profile.csv").read_text()
    r = invoke("profile", "--out", str(d), "--force", "--seed", "5", *SMALL)
    assert r.exit_code == 0 and (d / "profile.csv").read_text() != before


def test_ecofreq_levels_outside_a_profile_fail_before_simulating(small_profile):
    d, _ = small_profile
    r = invoke("bench", "--profile", str(d), "--policy", "static:990", "--duration-s", "5")
    assert r.exit_code == 2 and "covers 1005-1410 MHz" in r.output
