import json

import pandas as pd
from typer.testing import CliRunner

from voltana_cli.cli import app

runner = CliRunner()
FAST = ["--duration-s", "5", "--request-rate", "20"]


def invoke(*args):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_bench_default_policies_and_table():
    r = invoke("bench", "--dataset", "sharegpt", *FAST)
    assert r.exit_code == 0, r.output
    for name in ("static-max", "static-min", "voltana", "ITL rule", "saving vs static-max"):
        assert name in r.output


def test_bench_json_schema_csv_and_plot(tmp_path):
    j, c, p = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.png"
    r = invoke("bench", "--request-rate", "10:20:10", "--duration-s", "5", "--policy", "static-max",
               "--policy", "voltana", "--seed", "7", "--json", str(j), "--csv", str(c), "--plot", str(p))
    assert r.exit_code == 0, r.output
    rep = json.loads(j.read_text())
    assert rep["voltana_version"]
    cfg = rep["config"]
    assert cfg["seed"] == 7 and cfg["gpu"] == "a100-80g-sxm4" and cfg["model"] == "llama-3.1-8b"
    assert cfg["slo_ttft_ms"] == 800 and cfg["slo_itl_ms"] == 50
    assert [(x["request_rate"], x["policy"]) for x in rep["runs"]] == [
        (10.0, "static-max"), (10.0, "voltana"), (20.0, "static-max"), (20.0, "voltana")]
    for run in rep["runs"]:
        assert set(run["energy_j"]) >= {"total", "prefill", "decode", "idle"}
        assert set(run["attainment"]) >= {"ttft", "itl", "both"}
        assert all(0 <= v <= 1 for v in run["attainment"].values())
        for k in ("ttft_ms", "itl_ms"):
            assert set(run[k]) >= {"mean", "p50", "p90", "p99"}
        assert set(run["throughput"]) >= {"requests_per_s", "output_tokens_per_s"}
        assert run["num_requests"] > 0 and run["joules_per_output_token"] > 0
    header = c.read_text().splitlines()[0]
    assert "ttft_ms" in header and "policy" in header
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_other_datasets_run(tmp_path):
    csv = tmp_path / "w.csv"
    csv.write_text("input_tokens,output_tokens,arrival_s\n" + "".join(f"{100 + i},{20 + i},{i * 0.2}\n" for i in range(50)))
    for args in (["--dataset", "azure-conv"], ["--dataset", "azure-code", "--arrival", "poisson"],
                 ["--dataset", "random"], ["--dataset", "csv", "--dataset-path", str(csv)],
                 ["--dataset", "random", "--arrival", "gamma", "--burstiness", "0.5"]):
        r = invoke("bench", *args, *FAST, "--policy", "voltana")
        assert r.exit_code == 0, (args, r.output)


def test_the_random_dataset_draws_the_lengths_it_is_given(tmp_path):
    """As SGLang's bench_serving: lengths uniform from ratio x the longest to the longest."""
    c = tmp_path / "r.csv"
    r = invoke("bench", "--dataset", "random", "--random-input-len", "40", "--random-output-len", "8",
               "--random-range-ratio", "0.5", *FAST, "--policy", "static-max", "--csv", str(c))
    assert r.exit_code == 0, r.output
    df = pd.read_csv(c)
    assert df["input_tokens"].between(20, 40).all() and df["output_tokens"].between(4, 8).all()
    assert df["input_tokens"].nunique() > 10 and set(df["output_tokens"]) == set(range(4, 9))


def test_help_lists_the_four_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("profile", "tune", "serve", "bench"):
        assert cmd in r.output




def test_a_trace_shorter_than_the_window_says_so(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("input_tokens,output_tokens,arrival_s\n" + "".join(f"100,20,{i}\n" for i in range(51)))
    r = invoke("bench", "--dataset", "csv", "--dataset-path", str(csv), "--request-rate", "5", "--duration-s", "60",
               "--policy", "voltana", "--json", str(tmp_path / "r.json"))
    assert r.exit_code == 0, r.output
    note = "at 5 req/s the trace's 51 requests cover 10 s of the 60 s asked"
    assert note in r.output
    assert any(note in n for n in json.loads((tmp_path / "r.json").read_text())["config"]["workload_notes"])
