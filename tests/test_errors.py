"""Bad input reads right from both sides: the CLI names its flag, the core names its field.

Each case is one bad input given twice: (a) to ``voltana bench`` through the CLI, which must exit 2 with
exactly one ``error: --flag...`` line and no traceback; (b) to the core library call behind it, which must
raise a ``UserError`` whose ``field`` is the domain field and whose message names no command-line flag.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from voltana_cli.cli import app
from voltana_cli.core.errors import UserError
from voltana_cli.core.models.analytical import PerfModel
from voltana_cli.core.models.specs import engine_spec, gpu_spec, model_spec
from voltana_cli.core.report import check_writable
from voltana_cli.core.workloads import (
    DatasetRequest,
    arrival_times,
    build_workload,
    get_tokenizer_counter,
    load_lengths,
    read_azure_trace,
    read_sharegpt_records,
    sharegpt_lengths_from_json,
)

GPU, MODEL = "a100-80g-sxm4", "llama-3.1-8b"
PROFILE = f"{GPU}/{MODEL}"  # shipped, taken at TP 1
MISSING_CSV = Path("/nonexistent.csv")
MISSING_DIR_JSON = Path("/nonexistent-dir/x.json")
#: A command-line flag anywhere in a message (``--json``, ``--dataset-path``), not a dash inside a word.
FLAG = re.compile(r"(?<![\w-])--[a-z]")

runner = CliRunner()


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _sharegpt_json(tmp_path: Path) -> Path:
    p = tmp_path / "s.json"
    conv = [{"from": "human", "value": "hello there"}, {"from": "gpt", "value": "a fine answer"}]
    p.write_text(json.dumps([{"id": "a", "conversations": conv}]))
    return p


def _profile_at_tp2() -> object:
    # Imported here: the profile format is another package's concern, needed by this case only.
    from voltana_cli.core.models.profile import load_profile
    from voltana_cli.core.models.profiled import ProfileModel

    return ProfileModel(load_profile(PROFILE), PerfModel(gpu_spec(GPU), model_spec(MODEL), engine_spec(), tp=2))


def _parse_rates(text: str) -> object:
    from voltana_cli.core.bench import parse_rates

    return parse_rates(text)


@dataclass(frozen=True)
class Case:
    """One bad input: the bench arguments and the flag they must name, the core call and its field."""

    cli: Callable[[Path], list[str]]
    flag: str
    core: Callable[[Path], object]
    field: str


CASES: dict[str, Case] = {
    "request-rate-abc": Case(lambda _: ["--request-rate", "abc"], "--request-rate",
                             lambda _: _parse_rates("abc"), "request_rates"),
    "request-rate-0": Case(lambda _: ["--request-rate", "0"], "--request-rate",
                           lambda _: arrival_times("poisson", 0.0, _rng(), duration_s=1.0), "request_rates"),
    "dataset-unknown": Case(lambda _: ["--dataset", "nope"], "--dataset",
                            lambda _: load_lengths(DatasetRequest("nope"), _rng(), 10), "dataset"),
    "dataset-path-missing": Case(lambda _: ["--dataset", "csv", "--dataset-path", str(MISSING_CSV)], "--dataset-path",
                                 lambda _: load_lengths(DatasetRequest("csv", MISSING_CSV), _rng(), 10), "dataset_path"),
    "dataset-csv-without-path": Case(lambda _: ["--dataset", "csv"], "--dataset-path",
                                     lambda _: load_lengths(DatasetRequest("csv"), _rng(), 10), "dataset_path"),
    "tokenizer-unknown": Case(
        lambda t: ["--dataset", "sharegpt", "--dataset-path", str(_sharegpt_json(t)), "--tokenizer", "nope"],
        "--tokenizer", lambda t: sharegpt_lengths_from_json(_sharegpt_json(t), tokenizer="nope"), "tokenizer"),
    "gpu-unknown": Case(lambda _: ["--gpu", "nope"], "--gpu", lambda _: gpu_spec("nope"), "gpu"),
    "model-unknown": Case(lambda _: ["--model", "nope"], "--model", lambda _: model_spec("nope"), "model"),
    "tp-not-a-divisor": Case(lambda _: ["--tp", "3"], "--tp",
                             lambda _: PerfModel(gpu_spec(GPU), model_spec(MODEL), engine_spec(), tp=3), "tp"),
    "tp-vs-profile": Case(lambda _: ["--profile", PROFILE, "--tp", "2"], "--tp", lambda _: _profile_at_tp2(), "tp"),
    "arrival-unknown": Case(lambda _: ["--arrival", "weibull"], "--arrival",
                            lambda _: arrival_times("weibull", 1.0, _rng(), duration_s=1.0), "arrival"),
    "burstiness-0": Case(lambda _: ["--arrival", "gamma", "--burstiness", "0"], "--burstiness",
                         lambda _: arrival_times("gamma", 1.0, _rng(), duration_s=1.0, burstiness=0.0), "burstiness"),
    "num-prompts-beyond-trace": Case(
        lambda _: ["--dataset", "azure-conv", "--num-prompts", "1000000"], "--num-prompts",
        lambda _: build_workload(load_lengths(DatasetRequest("azure-conv"), _rng(), 10), "trace", 60.0, _rng(),
                                 num_requests=1_000_000), "num_prompts"),
    "duration-0": Case(lambda _: ["--duration-s", "0"], "--duration-s",
                       lambda _: build_workload(load_lengths(DatasetRequest("random"), _rng(), 10), "poisson", 1.0,
                                                _rng(), duration_s=0.0), "duration_s"),
    "json-folder-missing": Case(lambda _: ["--json", str(MISSING_DIR_JSON)], "--json",
                                lambda _: check_writable(MISSING_DIR_JSON, "json"), "json"),
    "csv-is-a-directory": Case(lambda t: ["--csv", str(t)], "--csv", lambda t: check_writable(t, "csv"), "csv"),
}

def invoke(*args: str) -> Result:
    """Run ``voltana`` like a user in a 200-column terminal (fixed, so output never wraps differently)."""
    return runner.invoke(app, list(args), env={"COLUMNS": "200"}, terminal_width=200)


@pytest.mark.parametrize("name", list(CASES))
def test_cli_prints_one_error_line_naming_the_flag(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    if name == "tokenizer-unknown":
        pytest.importorskip("quicktok")
    r = invoke("bench", *case.cli(tmp_path))
    out = r.output
    assert r.exit_code == 2, out
    assert "Traceback" not in out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    # The flag is the subject: ``error: --flag: problem`` (or ``error: --flag VALUE ...`` from a command).
    assert re.match(rf"error: {re.escape(case.flag)}(?![\w-])", errors[0]), errors[0]


@pytest.mark.parametrize("name", list(CASES))
def test_core_raises_user_error_with_the_field(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    if name == "tokenizer-unknown":
        pytest.importorskip("quicktok")
    with pytest.raises(UserError) as exc:
        case.core(tmp_path)
    assert exc.value.field == case.field, str(exc.value)
    assert not FLAG.search(str(exc.value)), str(exc.value)


@pytest.mark.parametrize("call,field", [
    (lambda t: engine_spec("nope"), "engine"),
    (lambda t: check_writable(MISSING_DIR_JSON, "--json"), "json"),  # a flag spelling still gives the field
    (lambda t: check_writable(MISSING_DIR_JSON, "--fit-only"), "fit_only"),
    (lambda t: build_workload(load_lengths(DatasetRequest("random"), _rng(), 10), "poisson", 1.0, _rng(),
                              num_requests=0), "num_prompts"),
    (lambda t: build_workload(load_lengths(DatasetRequest("random"), _rng(), 10), "poisson", 1.0, _rng()), "duration_s"),
    (lambda t: arrival_times("trace", 1.0, _rng(), duration_s=1.0), "arrival"),
    (lambda t: read_sharegpt_records(t / "missing.json"), "dataset_path"),
    (lambda t: read_azure_trace(t / "missing.csv", "azure-conv"), "dataset_path"),
    (lambda t: get_tokenizer_counter(str(t / "missing" / "tokenizer.json")), "tokenizer"),
], ids=["engine", "check-writable-flag-spelling", "check-writable-dashes", "num-prompts-0", "no-window",
        "trace-without-timestamps", "sharegpt-missing", "azure-missing", "tokenizer-file-missing"])
def test_core_only_errors_name_fields(call: Callable[[Path], object], field: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        call(tmp_path)
    assert exc.value.field == field, str(exc.value)
    assert not FLAG.search(str(exc.value)), str(exc.value)


def test_file_content_errors_name_the_file_not_a_field(tmp_path: Path) -> None:
    bad = tmp_path / "w.csv"
    bad.write_text("input_tokens,output_tokens\n10,abc\n")
    with pytest.raises(UserError, match=r"w\.csv row 2") as exc:
        load_lengths(DatasetRequest("csv", bad), _rng(), 10)
    assert exc.value.field is None and not FLAG.search(str(exc.value))
