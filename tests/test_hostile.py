"""Hostile input, one table: every row is a bad input to a command, and every row must end the same way.

Exit code 2, exactly one non-empty line of output, starting ``error:`` and holding the row's fragment (the
problem and, where there is one, the flag), no traceback, and no file created, changed or removed in the
run's folder. Rows are grouped by the class of input they attack:

- ``numbers``: values that are not numbers, or out of range (NaN, infinities, negatives, zero);
- ``world``: inputs beyond what the modelled world or one run can hold (token counts, context, sizes);
- ``files``: files that are not what they claim (traces, datasets, profiles, predictors, tokenizers);
- ``fits``: profiles from which EcoPred cannot be fitted;
- ``writes``: outputs that cannot be written, or would damage something;
- ``messages``: usage mistakes whose message used to mislead.

A new command joins by adding rows. The numeric ranges are also searched with hypothesis, on the
configuration the bench validates (the same code path, without running a simulation).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from voltana_cli.cli import app, main
from voltana_cli.core.bench import make_config, prepare_bench
from voltana_cli.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "profiles" / "a100-80g-sxm4" / "llama-3.1-8b"
runner = CliRunner()
Args = list[str] | Callable[[Path, dict[str, Path]], list[str]]


@dataclass(frozen=True)
class Row:
    cls: str
    cmd: str
    args: Args
    msg: str


# --- Files the rows read, made once per test session in a folder of their own -------------------------------
AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _damaged_predictor(base: dict, change: Callable[[dict], None]) -> str:
    d = yaml.safe_load(yaml.safe_dump(base))
    change(d["predictor"])
    return yaml.safe_dump(d)


def _make_files(d: Path) -> dict[str, Path]:
    f: dict[str, Path] = {}

    def text(name: str, body: str | bytes) -> None:
        f[name] = d / name
        if isinstance(body, bytes):
            f[name].write_bytes(body)
        else:
            f[name].write_text(body)

    text("azure-ts.csv", AZ + "notatime,1,2\n")
    text("azure-tok.csv", AZ + "2023-11-16 18:15:46.6805900,abc,2\n")
    text("azure-neg.csv", AZ + "2023-11-16 18:15:46.6805900,5,-2\n")
    text("azure-huge.csv", AZ + "2023-11-16 18:15:46.6805900,1e30,2\n")
    text("azure-header.csv", AZ)
    text("empty.csv", "")
    text("cluster-yaml.yaml", "instances: [")
    text("cluster-ok.yaml", "instances:\n- {role: prefill, port: 31000, bootstrap_port: 31001}\n"
                            "- {role: decode, port: 31002}\n")
    text("cluster-dup.yaml", "instances:\n- {role: prefill, port: 31000, bootstrap_port: 31001}\n"
                             "- {role: decode, port: 31000}\n")
    text("garbage.bin", bytes(range(256)) * 16)
    text("trunc.json", '[{"id": "a", "conversations": [{"from": "human", "val')
    text("malformed.csv", "input_tokens,output_tokens\n1,abc\n")
    text("big.csv", "input_tokens,output_tokens\n1e30,5\n")
    text("long.csv", "input_tokens,output_tokens\n200000,5\n")
    text("one.csv", "input_tokens,output_tokens,arrival_s\n10,5,0\n")
    conv = [{"from": "human", "value": "hi there"}, {"from": "gpt", "value": "ok"}]
    text("sg.json", json.dumps([{"id": "a", "conversations": conv}]))
    text("tok.json", "not a tokenizer")
    text("afile", "x")
    f["adir"] = d / "adir"
    f["adir"].mkdir()
    # Predictors: one good fit, then damaged copies.
    good = f["tuned.yaml"] = d / "tuned.yaml"
    r = runner.invoke(app, ["tune", "--fit-only", "--out", str(good)])
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(good.read_text())
    seg0 = lambda p: p["decode"]["latency_ms"][1410][0]  # noqa: E731
    text("pred-list.yaml", _damaged_predictor(doc, lambda p: p["decode"].__setitem__("latency_ms", [1, 2])))
    text("pred-nan.yaml", _damaged_predictor(doc, lambda p: seg0(p).__setitem__(0, float("nan"))))
    text("pred-negkv.yaml", _damaged_predictor(doc, lambda p: seg0(p).__setitem__(2, -5.0)))
    text("pred-negative.yaml", _damaged_predictor(doc, lambda p: seg0(p).__setitem__(0, -500.0)))
    text("pred-schema.yaml", "schema: something/9\n")
    # Profiles: binary metadata, a row at a clock the GPU lacks, and two too thin to fit.
    for name in ("prof-binary", "prof-clock"):
        shutil.copytree(SHIPPED, d / name)
        f[name] = d / name
    (f["prof-binary"] / "metadata.yaml").write_bytes(bytes(range(128, 256)) * 10)
    csv = f["prof-clock"] / "profile.csv"
    csv.write_text(csv.read_text().replace("\nprefill,780,", "\nprefill,781,", 1))
    for name, extra in (("prof-thin", ["--clocks", "1005,1410", "--batch-sizes", "1,2", "--kv-per-request", "64",
                                       "--prefill-tokens", "64,128", "--prefill-seqs", "1", "--repeats", "1"]),
                        ("prof-one", ["--batch-sizes", "8", "--kv-per-request", "64", "--repeats", "2"])):
        f[name] = d / name
        r = runner.invoke(app, ["profile", "--out", str(f[name]), *extra])
        assert r.exit_code == 0, r.output
    return f


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _make_files(tmp_path_factory.mktemp("hostile-files"))


def _p(name: str, *before: str) -> Callable[[Path, dict[str, Path]], list[str]]:
    """Arguments ending in the path of a prepared file: ``_p("x.csv", "--dataset-path")``."""
    return lambda out, f: [*before, str(f[name])]


def _o(*args: str) -> Callable[[Path, dict[str, Path]], list[str]]:
    """Arguments with ``{out}`` replaced by the run's (empty) output folder."""
    return lambda out, f: [a.replace("{out}", str(out)) for a in args]


# --- The table --------------------------------------------------------------------------------------------
ROWS: dict[str, Row] = {
    # numbers
    "bench-rate-0": Row("numbers", "bench", ["--request-rate", "0"], "--request-rate: 0 must be a number > 0"),
    "bench-rate-neg": Row("numbers", "bench", ["--request-rate", "-5"], "--request-rate: -5 must be a number > 0"),
    "bench-rate-text": Row("numbers", "bench", ["--request-rate", "x"], "not a number"),
    "bench-rate-nan": Row("numbers", "bench", ["--request-rate", "nan"], "--request-rate: nan must be a number > 0"),
    "bench-rate-inf": Row("numbers", "bench", ["--request-rate", "inf"], "--request-rate: inf must be a number > 0"),
    "bench-sweep-desc": Row("numbers", "bench", ["--request-rate", "10:5:1"], "START:STOP:STEP"),
    "bench-sweep-inf": Row("numbers", "bench", ["--request-rate", "50:inf:10"], "a sweep is START:STOP:STEP"),
    "bench-sweep-parts": Row("numbers", "bench", ["--request-rate", "1:2"], "not a number or START:STOP:STEP"),
    "bench-duration-0": Row("numbers", "bench", ["--duration-s", "0"], "--duration-s: 0.0 must be a number of seconds"),
    "bench-duration-nan": Row("numbers", "bench", ["--duration-s", "nan"], "--duration-s: nan must be"),
    "bench-prompts-0": Row("numbers", "bench", ["--num-prompts", "0"], "--num-prompts: 0 must be > 0"),
    "bench-prefill-0": Row("numbers", "bench", ["--prefill", "0"], "--prefill: 0 prefill instances"),
    "bench-decode-neg": Row("numbers", "bench", ["--decode", "-1"], "--decode: -1 decode instances"),
    "bench-pred-error": Row("numbers", "bench", ["--prediction-error", "1.5"], "--prediction-error: 1.5 must be"),
    "bench-burst-nan": Row("numbers", "bench", ["--burstiness", "nan"], "--burstiness: nan must be a number > 0"),
    "bench-burst-tiny": Row("numbers", "bench", ["--burstiness", "1e-9", "--arrival", "gamma"], "is below 0.01"),
    "bench-burst-poisson": Row("numbers", "bench", ["--burstiness", "0.5"], "shapes gamma arrivals only"),
    "bench-random-in-0": Row("numbers", "bench", ["--dataset", "random", "--random-input-len", "0"],
                             "--random-input-len: 0 must be a number of tokens >= 1"),
    "bench-random-ratio": Row("numbers", "bench", ["--dataset", "random", "--random-range-ratio", "nan"],
                              "--random-range-ratio: nan must be a fraction from 0 to 1"),
    "bench-random-not-random": Row("numbers", "bench", ["--random-output-len", "300"],
                                   "the sharegpt dataset has its own: leave it out, or use --dataset random"),
    "bench-seed-neg": Row("numbers", "bench", ["--seed", "-1"], "--seed: -1 must be a whole number >= 0"),
    "bench-seed-text": Row("numbers", "bench", ["--seed", "abc"], "--seed: "),
    "bench-tp-0": Row("numbers", "bench", ["--tp", "0"], "--tp: 0 must be >= 1"),
    "bench-tp-3": Row("numbers", "bench", ["--tp", "3"], "--tp: "),
    "bench-noise-50": Row("numbers", "bench", ["--noise", "50"], "--noise: 50.0 must be a lognormal sigma"),
    "bench-noise-nan": Row("numbers", "bench", ["--noise", "nan"], "--noise: nan must be"),
    "bench-margin-nan": Row("numbers", "bench", ["--ecofreq-margin", "nan"], "--ecofreq-margin: nan is outside"),
    "bench-slo-inf": Row("numbers", "bench", ["--slo-itl-ms", "inf"], "--slo-itl-ms: "),
    "bench-slo-0": Row("numbers", "bench", ["--slo-ttft-ms", "0"], "--slo-ttft-ms: "),
    "bench-clock": Row("numbers", "bench", ["--policy", "static:1000"], "1000 MHz is not a supported clock"),
    # serve: refused before anything starts (--dry-run where the row would otherwise launch a cluster).
    "serve-zero-prefill": Row("numbers", "serve", ["--prefill", "0", "--dry-run"], "--prefill: 0 prefill instances"),
    "serve-port": Row("numbers", "serve", ["--port", "70000", "--dry-run"], "65535"),
    "serve-engine": Row("world", "serve", ["--engine", "vllm", "--dry-run"], "--engine"),
    "serve-yardstick": Row("world", "serve", ["--policy", "oracle", "--dry-run"], "yardstick"),
    "serve-public": Row("world", "serve", ["--host", "0.0.0.0", "--dry-run"], "--api-key"),
    "serve-node": Row("world", "serve", lambda o, f: ["--config", str(f["cluster-ok.yaml"]), "--node", "10.9.9.9",
                                                       "--dry-run"], "no instance of the cluster runs on '10.9.9.9'"),
    "serve-no-config": Row("files", "serve", lambda o, f: ["--config", str(o / "none.yaml")], "cannot read"),
    "serve-yaml": Row("files", "serve", lambda o, f: ["--config", str(f["cluster-yaml.yaml"])], "is not valid YAML"),
    "serve-dup": Row("files", "serve", lambda o, f: ["--config", str(f["cluster-dup.yaml"])], "port 31000 on"),
    "serve-config-dir": Row("files", "serve", lambda o, f: ["--config", str(f["adir"])], "cannot read"),
    # bench --url: refused before any request is sent.
    "url-scheme": Row("messages", "bench", ["--url", "ftp://x"], "is not an http(s) URL"),
    "url-sim-only": Row("messages", "bench", ["--url", "http://127.0.0.1:9", "--noise", "0.1"], "--noise shapes"),
    "url-plot": Row("writes", "bench", lambda o, f: ["--url", "http://127.0.0.1:9", "--plot", str(o / "p.png")],
                    "--plot draws simulated runs"),
    "url-unreachable": Row("world", "bench", lambda o, f: ["--url", "http://127.0.0.1:9", "--json",
                                                           str(o / "r.json")], "cannot reach"),
    "bench-colocated-clock": Row("numbers", "bench", ["--policy", "colocated:fast"], "write it as colocated:<MHz>"),
    "bench-levels": Row("numbers", "bench", ["--ecofreq-clocks", "1005,1400"], "1400 MHz is not a supported clock"),
    "bench-levels-empty": Row("numbers", "bench", ["--ecofreq-clocks", ""], "--ecofreq-clocks ''"),
    "bench-levels-gap": Row("numbers", "bench", ["--ecofreq-clocks", "1005,,1410"], "--ecofreq-clocks '1005,,1410'"),
    "profile-noise-nan": Row("numbers", "profile", ["--noise", "nan"], "--noise: nan is out of range"),
    "profile-seed-neg": Row("numbers", "profile", ["--seed", "-1"], "--seed: -1 must be"),
    "profile-tp-0": Row("numbers", "profile", ["--tp", "0"], "--tp: 0 must be >= 1"),
    "profile-clock": Row("numbers", "profile", ["--clocks", "1000"], "--clocks: a100-80g-sxm4 does not support 1000"),
    "profile-cooldown-nan": Row("numbers", "profile", ["--cooldown-s", "nan"], "--cooldown-s: nan is out of range"),
    "profile-window-inf": Row("numbers", "profile", ["--min-window-s", "inf"], "--min-window-s: inf is out of range"),
    "profile-batch-gap": Row("numbers", "profile", ["--batch-sizes", "1,,2"], "--batch-sizes '1,,2'"),
    "profile-batch-0": Row("numbers", "profile", ["--batch-sizes", "0,8"], "--batch-sizes: has 0"),
    "profile-repeats-0": Row("numbers", "profile", ["--repeats", "0"], "--repeats: 0 is below 1"),
    "tune-seed-neg": Row("numbers", "tune", ["--fit-only", "--seed", "-1"], "--seed: -1 must be a whole number >= 0"),
    "tune-holdout": Row("numbers", "tune", ["--fit-only", "--holdout", "0.99"], "--holdout: 0.99 leaves too little"),
    "tune-random-not-random": Row("numbers", "tune", ["--random-input-len", "64", "--out", "t.yaml"],
                                  "--random-input-len: 64 sets the random dataset's lengths"),
    # world
    "bench-tokens-1e30": Row("world", "bench", _p("big.csv", "--dataset", "csv", "--dataset-path"),
                             "expected a whole number from 1 to"),
    "bench-context": Row("world", "bench", _p("long.csv", "--dataset", "csv", "--dataset-path"),
                         "--dataset: 1 request(s) of csv:long.csv"),
    "bench-rate-1e9": Row("world", "bench", ["--request-rate", "1e9"], "--duration-s: 120 s at 1e+09 req/s is about"),
    "bench-duration-1e9": Row("world", "bench", ["--duration-s", "1e9"], "the limit is 2,000,000 per run"),
    "bench-sweep-1e6": Row("world", "bench", ["--request-rate", "1:1000000:1"], "is a sweep of 1,000,000 rates"),
    "bench-prompts-1e8": Row("world", "bench", ["--num-prompts", "100000000"], "--num-prompts: 100,000,000 is above"),
    "bench-instances": Row("world", "bench", ["--prefill", "100000"], "--prefill: 100000 prefill instances is above"),
    "bench-beyond-trace": Row("world", "bench", ["--dataset", "azure-conv", "--num-prompts", "1000000"],
                              "--num-prompts: "),
    "profile-repeats": Row("world", "profile", ["--repeats", "100000"], "--repeats: 100000 is above 1000"),
    "profile-tokens": Row("world", "profile", ["--prefill-tokens", "10000000"], "--prefill-tokens: 10000000 is above"),
    "profile-context": Row("world", "profile", ["--prefill-tokens", "200000", "--prefill-seqs", "1"],
                           "above the model's context of 131,072"),
    "profile-kv-context": Row("world", "profile", ["--kv-per-request", "200000"], "--kv-per-request: 200,000 tokens"),
    # files
    "azure-timestamp": Row("files", "bench", _p("azure-ts.csv", "--dataset", "azure-conv", "--dataset-path"),
                           "row 2: TIMESTAMP 'notatime' is not a date and time"),
    "azure-tokens": Row("files", "bench", _p("azure-tok.csv", "--dataset", "azure-conv", "--dataset-path"),
                        "row 2: ContextTokens 'abc' is not a whole number"),
    "azure-negative": Row("files", "bench", _p("azure-neg.csv", "--dataset", "azure-conv", "--dataset-path"),
                          "GeneratedTokens '-2' is not a whole number"),
    "azure-huge": Row("files", "bench", _p("azure-huge.csv", "--dataset", "azure-conv", "--dataset-path"),
                      "ContextTokens"),
    "azure-no-rows": Row("files", "bench", _p("azure-header.csv", "--dataset", "azure-conv", "--dataset-path"),
                         "has the trace's columns but no rows"),
    "azure-empty": Row("files", "bench", _p("empty.csv", "--dataset", "azure-conv", "--dataset-path"),
                       "is not a readable CSV"),
    "azure-binary": Row("files", "bench", _p("garbage.bin", "--dataset", "azure-code", "--dataset-path"),
                        "is not a readable CSV"),
    "azure-directory": Row("files", "bench", _p("adir", "--dataset", "azure-conv", "--dataset-path"),
                           "--dataset-path: cannot read"),
    "sharegpt-truncated": Row("files", "bench", _p("trunc.json", "--dataset", "sharegpt", "--dataset-path"),
                              "first complete record"),
    "sharegpt-binary": Row("files", "bench", _p("garbage.bin", "--dataset", "sharegpt", "--dataset-path"), "error"),
    "csv-malformed": Row("files", "bench", _p("malformed.csv", "--dataset", "csv", "--dataset-path"), "row 2"),
    "csv-missing": Row("files", "bench", ["--dataset", "csv", "--dataset-path", "/no/such.csv"], "does not exist"),
    "csv-no-path": Row("files", "bench", ["--dataset", "csv"], "--dataset-path: the csv dataset needs a file"),
    "trace-one-request": Row("files", "bench", _p("one.csv", "--arrival", "trace", "--dataset", "csv", "--dataset-path"),
                             "--dataset-path: the trace has 1 timestamped request(s)"),
    "tokenizer-not": Row("files", "bench", lambda o, f: ["--dataset", "sharegpt", "--dataset-path", str(f["sg.json"]),
                                                         "--tokenizer", str(f["tok.json"])],
                         "is not a Hugging Face tokenizer.json"),
    "predictor-dir": Row("files", "bench", _p("adir", "--predictor"), "is a directory"),
    "predictor-list": Row("files", "bench", _p("pred-list.yaml", "--predictor"), "not a list"),
    "predictor-nan": Row("files", "bench", _p("pred-nan.yaml", "--predictor"), "non-finite"),
    "predictor-neg-kv": Row("files", "bench", _p("pred-negkv.yaml", "--predictor"), "negative KV"),
    "predictor-negative": Row("files", "bench", _p("pred-negative.yaml", "--predictor"), "predicts -"),
    "predictor-schema": Row("files", "bench", _p("pred-schema.yaml", "--predictor"), "pred-schema.yaml"),
    "predictor-binary": Row("files", "bench", _p("garbage.bin", "--predictor"), "garbage.bin"),
    "profile-binary-meta": Row("files", "bench", _p("prof-binary", "--profile"), "not a text file"),
    "profile-bad-clock": Row("files", "bench", _p("prof-clock", "--profile"), "clock_mhz 781 is not one of the GPU's"),
    "profile-not-a-dir": Row("files", "tune", _p("garbage.bin", "--fit-only", "--profile"), "not found"),
    "profile-empty-dir": Row("files", "bench", _p("adir", "--profile"), "no profile.csv in this directory"),
    "hf-config-binary": Row("files", "profile", _p("garbage.bin", "--backend", "torch", "--device", "cpu",
                                                   "--hf-config"), "--hf-config: "),
    "hf-config-for-sim": Row("files", "profile", _p("sg.json", "--hf-config"), "--hf-config: is for the torch backend"),
    # fits
    "fit-thin": Row("fits", "tune", _p("prof-thin", "--fit-only", "--profile"),
                    "cover 2 batch size(s) and 1 context length(s); EcoPred needs at least 3 and 2"),
    "fit-one-batch": Row("fits", "tune", _p("prof-one", "--fit-only", "--profile"), "cover 1 batch size(s)"),
    "fit-binary": Row("fits", "tune", _p("prof-binary", "--fit-only", "--profile"), "not a text file"),
    # writes
    "json-missing-folder": Row("writes", "bench", ["--json", "/no/such/dir/r.json"], "does not exist"),
    "json-is-dir": Row("writes", "bench", _o("--json", "{out}"), "is a directory"),
    "json-empty": Row("writes", "bench", ["--json", ""], "--json: "),
    "json-csv-same": Row("writes", "bench", _o("--json", "{out}/same", "--csv", "{out}/same"), "--csv: "),
    "json-under-file": Row("writes", "bench", lambda o, f: ["--json", str(f["afile"] / "r.json")], "--json: "),
    "profile-out-under-file": Row("writes", "profile", lambda o, f: ["--out", str(f["afile"] / "sub")], "is a file"),
    "profile-out-empty": Row("writes", "profile", ["--out", ""], "--out: is empty"),
    "profile-out-exists": Row("writes", "profile", ["--out", str(SHIPPED)], "--force"),
    "tune-out-dir": Row("writes", "tune", _o("--fit-only", "--out", "{out}"), "--out: "),
    # messages
    "bench-dataset": Row("messages", "bench", ["--dataset", "nope"], "--dataset: unknown dataset"),
    "bench-policy": Row("messages", "bench", ["--policy", "bogus"], "--policy: unknown policy"),
    "bench-gpu": Row("messages", "bench", ["--gpu", "b300"], "--gpu: unknown gpu"),
    "bench-model": Row("messages", "bench", ["--model", "gpt-9"], "--model: unknown model"),
    "bench-random-path": Row("messages", "bench", ["--dataset", "random", "--dataset-path", "x.csv"],
                             "--dataset-path: x.csv is not read by the random"),
    "bench-tokenizer-unused": Row("messages", "bench", ["--dataset", "random", "--tokenizer", "gpt2"],
                                  "--tokenizer: gpt2 counts ShareGPT's text only"),
    "profile-warmup-sim": Row("messages", "profile", ["--warmup", "5"], "--warmup: 5 is for the measuring backends"),
    "profile-backend": Row("messages", "profile", ["--backend", "cuda"], "--backend: "),
    "tune-no-out": Row("messages", "tune", [], "--out: give the tuned config's path"),
    "tune-target": Row("numbers", "tune", _o("--out", "{out}/t.yaml", "--target-attainment", "nan"),
                       "--target-attainment: nan is outside (0, 1]"),
    "tune-storage": Row("messages", "tune", _o("--out", "{out}/t.yaml", "--storage", "redis://x"),
                        "--storage: 'redis://x' is not a study storage"),
    "tune-trials": Row("numbers", "tune", _o("--out", "{out}/t.yaml", "--trials", "0"), "--trials: 0 must be >= 1"),
    "tune-rates": Row("numbers", "tune", _o("--out", "{out}/t.yaml", "--request-rate", "0"),
                      "--request-rate: 0 must be a number > 0"),
    "tune-profile-missing": Row("files", "tune", _o("--out", "{out}/t.yaml", "--profile", "{out}/nope"), "not found"),
    "tune-world": Row("world", "tune", _o("--out", "{out}/t.yaml", "--request-rate", "1e9"), "--duration-s: "),
    "bench-tuned-missing": Row("files", "bench", ["--tuned", "/no/such/tuned.yaml"], "--tuned: "),
    "bench-tuned-fit-only": Row("files", "bench", _p("tuned.yaml", "--tuned"), "--tuned: "),
    "bench-tuned-policy": Row("messages", "bench", ["--policy", "voltana-tuned"], "needs a tuned config"),
    "no-command": Row("messages", "", [], "no command given: choose one of bench, profile, serve, tune"),
}


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str
    error: BaseException | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(args: list[str]) -> Ran:
    """Run ``voltana ARGS`` through the console script's own entry point (``cli.main``, which turns click's
    usage errors into the one line), in this process, with both streams captured."""
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_handlers = sys.argv, {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    sys.argv, code, error = ["voltana", *args], 0, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001  (reported by the assertion, with its traceback text)
        code, error = -1, exc
        err.write("".join(traceback.format_exception(exc)))
    finally:
        sys.argv = old_argv
        for s, h in old_handlers.items():
            signal.signal(s, h)
    return Ran(code, out.getvalue(), err.getvalue(), error)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if not p.is_symlink()}


@pytest.mark.parametrize("name", list(ROWS))
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(name: str, files: dict[str, Path], tmp_path: Path) -> None:
    row = ROWS[name]
    out = tmp_path / "out"
    out.mkdir()
    args = row.args(out, files) if callable(row.args) else list(row.args)
    if row.cmd == "profile" and "--out" not in args:
        args += ["--out", str(out / "p")]
    before, shared = _snapshot(tmp_path), _snapshot(files["afile"].parent)
    r = run_cli([row.cmd, *args] if row.cmd else [])
    text = r.stderr if not row.cmd else r.output  # bare `voltana` shows its help on stdout, then the line
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert r.code == 2 and r.error is None and "Traceback" not in r.output, r.output
    assert len(lines) == 1 and lines[0].startswith("error:") and row.msg in lines[0], r.output
    assert _snapshot(tmp_path) == before and _snapshot(files["afile"].parent) == shared


def test_the_table_covers_every_class_and_command() -> None:
    seen = {(r.cls, r.cmd) for r in ROWS.values()}
    for cls in ("numbers", "world", "files", "fits", "writes", "messages"):
        assert {c for k, c in seen if k == cls}, cls
    for cmd in ("bench", "profile", "tune"):
        assert {k for k, c in seen if c == cmd} >= ({"numbers", "world", "files", "writes", "messages"}
                                                    if cmd != "tune" else {"numbers", "files", "fits", "writes"}), cmd


def counts() -> dict[str, dict[str, int]]:
    """Rows per class and command (the closing note reports them)."""
    out: dict[str, dict[str, int]] = {}
    for r in ROWS.values():
        out.setdefault(r.cls, {}).setdefault(r.cmd or "voltana", 0)
        out[r.cls][r.cmd or "voltana"] += 1
    return out


# --- Numeric ranges, searched -------------------------------------------------------------------------------
ANY_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-300, 1e300]))
NUMERIC = ("duration_s", "burstiness", "slo_ttft_ms", "slo_itl_ms", "ecofreq_margin", "prediction_error", "noise")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(NUMERIC), value=ANY_FLOAT, rate=ANY_FLOAT)
def test_any_number_is_either_a_valid_config_or_one_user_error(field: str, value: float, rate: float) -> None:
    """Every float for every numeric bench field (and the rate): accepted with finite, in-range values that
    prepare without error, or refused as a ``UserError`` naming a field; never another exception."""
    fields = {"dataset": "random", "request_rates": [rate], field: value,
              "arrival": "gamma" if field == "burstiness" else "auto"}
    try:
        prep = prepare_bench(make_config(**fields))
    except UserError as exc:
        assert exc.field, str(exc)
        return
    cfg = prep.cfg
    assert all(math.isfinite(x) and x > 0 for x in cfg.request_rates)
    assert math.isfinite(getattr(cfg, field))
    assert cfg.slo_ttft_ms > 0 and cfg.slo_itl_ms > 0 and 0 <= cfg.noise < 1 and 0 <= cfg.prediction_error < 1


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet="0123456789.:-einfa ", max_size=14))
def test_any_rate_text_parses_to_finite_positive_rates_or_one_user_error(text: str) -> None:
    from voltana_cli.core.bench import parse_rates

    try:
        rates = parse_rates(text)
    except UserError as exc:
        assert exc.field == "request_rates"
        return
    assert rates and all(math.isfinite(r) and r > 0 for r in rates) and len(rates) <= 1000

