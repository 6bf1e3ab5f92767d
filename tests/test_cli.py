import json
from pathlib import Path

import pytest
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


@pytest.mark.parametrize("args,msg", [
    (["--dataset", "nope"], "--dataset: unknown dataset"),
    (["--policy", "bogus"], "--policy: unknown policy"),
    (["--gpu", "b300"], "--gpu: unknown gpu"),
    (["--model", "gpt-9"], "--model: unknown model"),
    (["--request-rate", "0"], "--request-rate: 0 must be a number > 0"),
    (["--request-rate", "-5"], "--request-rate: -5 must be a number > 0"),
    (["--request-rate", "x"], "not a number"),
    (["--request-rate", "10:5:1"], "START:STOP:STEP"),
    (["--policy", "static:1000"], "--policy: static:1000: 1000 MHz is not a supported clock"),
    (["--ecofreq-clocks", "1005,1400"], "--ecofreq-clocks: 1400 MHz is not a supported clock"),
    (["--dataset", "csv", "--dataset-path", "/no/such.csv"], "does not exist"),
    (["--dataset", "csv"], "--dataset-path: the csv dataset needs a file"),
    (["--prefill", "0"], "--prefill: 0 prefill instances"),
    (["--duration-s", "0"], "--duration-s: 0.0 must be a number of seconds > 0"),
    (["--prediction-error", "1.5"], "--prediction-error: 1.5 must be a fraction"),
    (["--num-prompts", "0"], "--num-prompts: 0 must be > 0"),
    (["--burstiness", "nan"], "--burstiness: nan must be a number > 0"),
    (["--burstiness", "0.5"], "--burstiness: 0.5 shapes gamma arrivals only"),
    (["--seed", "-1"], "--seed: -1 must be a whole number >= 0"),
    (["--tp", "0"], "--tp: 0 must be >= 1"),
    (["--noise", "50"], "--noise: 50.0 must be a lognormal sigma in [0, 1)"),
    (["--noise", "nan"], "--noise: nan must be"),
    (["--ecofreq-margin", "nan"], "--ecofreq-margin: nan is outside [-0.5, 2]"),
    (["--request-rate", "50:inf:10"], "--request-rate: 50:inf:10: a sweep is START:STOP:STEP"),
    (["--json", "/tmp/voltana-same.out", "--csv", "/tmp/voltana-same.out"], "--csv: /tmp/voltana-same.out is also"),
])
def test_bad_input_is_one_line_exit_2_naming_the_flag(args, msg):
    r = invoke("bench", *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and msg in lines[0] and lines[0].startswith("error:"), r.output
    assert "Traceback" not in r.output


def test_bad_files(tmp_path):
    trunc = tmp_path / "t.json"
    trunc.write_text('[{"id": "a", "conversations": [{"from": "human", "val')
    malformed = tmp_path / "m.csv"
    malformed.write_text("input_tokens,output_tokens\n1,abc\n")
    for args, msg in ((["--dataset", "sharegpt", "--dataset-path", str(trunc)], "first complete record"),
                      (["--dataset", "csv", "--dataset-path", str(malformed)], "row 2")):
        r = invoke("bench", *args)
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_nothing_written_on_error(tmp_path):
    j = tmp_path / "r.json"
    r = invoke("bench", "--policy", "bogus", "--json", str(j))
    assert r.exit_code == 2 and not j.exists() and list(tmp_path.iterdir()) == []
    r = invoke("bench", "--json", str(tmp_path / "missing" / "r.json"))
    assert r.exit_code == 2 and "does not exist" in r.output


@pytest.mark.parametrize("cmd", ["tune", "serve"])
def test_later_commands_do_not_pretend(cmd):
    r = invoke(cmd)
    assert r.exit_code == 2 and "later version" in r.output


def test_help_lists_the_four_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("profile", "tune", "serve", "bench"):
        assert cmd in r.output


def test_hostile_trace_and_config_files_are_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cols = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    cases = {
        "ts.csv": (cols + "notatime,1,2\n", "row 2: TIMESTAMP 'notatime' is not a date and time"),
        "tok.csv": (cols + "2023-11-16 18:15:46.6805900,abc,2\n", "row 2: ContextTokens 'abc' is not a whole number"),
        "neg.csv": (cols + "2023-11-16 18:15:46.6805900,5,-2\n", "GeneratedTokens '-2' is not a whole number"),
        "header.csv": (cols, "has the trace's columns but no rows"),
    }
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        r = invoke("bench", "--dataset", "azure-conv", "--dataset-path", str(tmp_path / name))
        assert r.exit_code == 2 and "--dataset-path:" in r.output and msg in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    r = invoke("bench", "--predictor", str(tmp_path / "adir"))
    assert r.exit_code == 2 and "--predictor:" in r.output and "is a directory" in r.output, r.output
    r = invoke("profile", "--out", str(tmp_path / "afile" / "sub"))
    assert r.exit_code == 2 and "--out:" in r.output and "is a file" in r.output, r.output


def test_inputs_beyond_the_world_are_refused_before_any_work(tmp_path):
    (tmp_path / "big.csv").write_text("input_tokens,output_tokens\n1e30,5\n")
    (tmp_path / "long.csv").write_text("input_tokens,output_tokens\n200000,5\n")
    for args, msg in (
        (["--dataset", "csv", "--dataset-path", str(tmp_path / "big.csv")], "expected a whole number from 1 to"),
        (["--dataset", "csv", "--dataset-path", str(tmp_path / "long.csv")], "--dataset: 1 request(s) of csv:long.csv"),
        (["--request-rate", "1e9"], "--duration-s: 120 s at 1e+09 req/s is about"),
        (["--duration-s", "1e9"], "the limit is 2,000,000 per run"),
        (["--request-rate", "1:1000000:1"], "--request-rate: 1:1000000:1 is a sweep of 1,000,000 rates"),
        (["--num-prompts", "100000000"], "--num-prompts: 100,000,000 is above the limit"),
    ):
        r = invoke("bench", *args)
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_damaged_predictors_and_profiles_are_one_line(tmp_path):
    import shutil

    import yaml

    tuned = tmp_path / "tuned.yaml"
    assert invoke("tune", "--fit-only", "--out", str(tuned)).exit_code == 0
    doc = yaml.safe_load(tuned.read_text())

    def damaged(name, change):
        d = yaml.safe_load(yaml.safe_dump(doc))
        change(d["predictor"])
        (tmp_path / name).write_text(yaml.safe_dump(d))
        return str(tmp_path / name)

    cases = [
        (damaged("list.yaml", lambda p: p["decode"].__setitem__("latency_ms", [1, 2])), "not a list"),
        (damaged("nan.yaml", lambda p: p["decode"]["latency_ms"][1410][0].__setitem__(0, float("nan"))), "non-finite"),
        (damaged("neg.yaml", lambda p: p["decode"]["latency_ms"][1410][0].__setitem__(2, -5.0)), "negative KV"),
    ]
    for path, msg in cases:
        r = invoke("bench", "--duration-s", "5", "--predictor", path)
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output
    shipped = Path(__file__).resolve().parent.parent / "profiles" / "a100-80g-sxm4" / "llama-3.1-8b"
    binary = tmp_path / "binary"
    shutil.copytree(shipped, binary)
    (binary / "metadata.yaml").write_bytes(bytes(range(128, 256)) * 10)
    clock = tmp_path / "clock"
    shutil.copytree(shipped, clock)
    text = (clock / "profile.csv").read_text()
    (clock / "profile.csv").write_text(text.replace("\nprefill,780,", "\nprefill,781,", 1))
    for d, msg in ((binary, "not a text file"), (clock, "clock_mhz 781 is not one of the GPU's clocks")):
        r = invoke("bench", "--duration-s", "5", "--profile", str(d))
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_profiles_too_thin_to_fit_say_what_they_lack(tmp_path):
    thin, one = tmp_path / "thin", tmp_path / "one"
    assert invoke("profile", "--out", str(thin), "--clocks", "1005,1410", "--batch-sizes", "1,2", "--kv-per-request",
                  "64", "--prefill-tokens", "64,128", "--prefill-seqs", "1", "--repeats", "1").exit_code == 0
    assert invoke("profile", "--out", str(one), "--batch-sizes", "8", "--kv-per-request", "64",
                  "--repeats", "2").exit_code == 0
    for args, msg in (
        (["--profile", str(thin)], "cover 2 batch size(s) and 1 context length(s); EcoPred needs at least 3 and 2"),
        (["--profile", str(one)], "cover 1 batch size(s)"),
        (["--holdout", "0.99"], "--holdout: 0.99 leaves too little to fit on"),
        (["--seed", "-1"], "--seed: -1 must be a whole number >= 0"),
    ):
        r = invoke("tune", "--fit-only", *args)
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output
    for args, msg in ((["--noise", "nan"], "--noise: nan is out of range"), (["--seed", "-1"], "--seed: -1 must be")):
        r = invoke("profile", "--out", str(tmp_path / "x"), *args)
        assert r.exit_code == 2 and msg in r.output and not (tmp_path / "x").exists(), r.output


@pytest.mark.parametrize("cmd,args,msg", [
    ("bench", ["--burstiness", "1e-9", "--arrival", "gamma"], "--burstiness: 1e-09 is below 0.01"),
    ("bench", ["--prefill", "100000"], "--prefill: 100000 prefill instances is above the limit"),
    ("bench", ["--ecofreq-clocks", "1005,,1410"], "--ecofreq-clocks '1005,,1410'"),
    ("bench", ["--ecofreq-clocks", ""], "--ecofreq-clocks ''"),
    ("bench", ["--dataset", "random", "--dataset-path", "x.csv"], "--dataset-path: x.csv is not read by the random"),
    ("profile", ["--clocks", "1000"], "--clocks: a100-80g-sxm4 does not support 1000 MHz"),
    ("profile", ["--cooldown-s", "nan"], "--cooldown-s: nan is out of range"),
    ("profile", ["--min-window-s", "inf"], "--min-window-s: inf is out of range"),
    ("profile", ["--repeats", "100000"], "--repeats: 100000 is above 1000"),
    ("profile", ["--prefill-tokens", "10000000"], "--prefill-tokens: 10000000 is above"),
    ("profile", ["--tp", "0"], "--tp: 0 must be >= 1"),
    ("profile", ["--batch-sizes", "1,,2"], "--batch-sizes '1,,2'"),
    ("profile", ["--warmup", "5"], "--warmup: 5 is for the measuring backends"),
])
def test_cases_the_hostile_sweep_found(cmd, args, msg, tmp_path):
    extra = ["--out", str(tmp_path / "p")] if cmd == "profile" else []
    r = invoke(cmd, *args, *extra)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and msg in lines[0], r.output


def test_one_request_traces_and_non_tokenizers_are_named(tmp_path):
    (tmp_path / "one.csv").write_text("input_tokens,output_tokens,arrival_s\n10,5,0\n")
    r = invoke("bench", "--dataset", "csv", "--dataset-path", str(tmp_path / "one.csv"), "--arrival", "trace")
    assert r.exit_code == 2 and "--dataset-path: the trace has 1 timestamped request(s)" in r.output, r.output
    sg = tmp_path / "sg.json"
    sg.write_text('[{"id": "a", "conversations": [{"from": "human", "value": "hi there"}, {"from": "gpt", "value": "ok"}]}]')
    (tmp_path / "tok.json").write_text("not a tokenizer")
    r = invoke("bench", "--dataset", "sharegpt", "--dataset-path", str(sg), "--tokenizer", str(tmp_path / "tok.json"))
    assert r.exit_code == 2 and "--tokenizer:" in r.output and "is not a Hugging Face tokenizer.json" in r.output, r.output


def test_a_value_click_rejects_is_one_line_naming_the_flag(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "voltana_cli", "bench", "--seed", "abc"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --seed: "), lines
