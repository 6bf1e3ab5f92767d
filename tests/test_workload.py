import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voltana_cli.core.errors import UserError
from voltana_cli.core.workloads import (
    DATASETS,
    DatasetRequest,
    arrival_times,
    build_workload,
    load_lengths,
    read_length_csv,
    read_sharegpt_records,
    register_dataset,
    sharegpt_lengths_from_json,
)

CONVS: list[dict[str, Any]] = [
    {"id": f"c{i}", "conversations": [{"from": "human", "value": "hello there " * (i + 1)},
                                       {"from": "gpt", "value": "a fine answer " * (2 * i + 1)}]}
    for i in range(6)
]


def test_truncated_sharegpt_recovers_complete_records(tmp_path: Path) -> None:
    full = json.dumps(CONVS, indent=2)
    cut = full[: full.index('"c4"') + 30]  # in the middle of the 5th record
    p = tmp_path / "t.json"
    p.write_text(cut)
    rec = read_sharegpt_records(p)
    assert rec.truncated and len(rec.records) == 4 and rec.dropped_bytes > 0
    assert [r["id"] for r in rec.records] == ["c0", "c1", "c2", "c3"]


def test_complete_sharegpt_and_no_record(tmp_path: Path) -> None:
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(CONVS))
    assert not read_sharegpt_records(p).truncated
    bad = tmp_path / "bad.json"
    bad.write_text('[ {"id": "x", "conversations": [ {"from"')
    with pytest.raises(UserError, match="first complete record"):
        read_sharegpt_records(bad)
    notarr = tmp_path / "obj.json"
    notarr.write_text('{"a": 1}')
    with pytest.raises(UserError, match="JSON array"):
        read_sharegpt_records(notarr)


def test_sharegpt_json_with_llama3_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("quicktok")
    p = tmp_path / "s.json"
    recs = [*CONVS, {"id": "short", "conversations": [{"from": "human", "value": "hi"}]}]
    p.write_text(json.dumps(recs)[:-1])  # drop the closing bracket: a truncated file
    tr = sharegpt_lengths_from_json(p, tokenizer="llama3")
    assert len(tr) == 6
    import quicktok

    enc = quicktok.get_encoding("llama3")
    assert tr.input_tokens[0] == 1 + len(enc.encode(CONVS[0]["conversations"][0]["value"]))  # + BOS
    assert tr.output_tokens[0] == len(enc.encode(CONVS[0]["conversations"][1]["value"]))
    assert any("skipped" in n for n in tr.notes)


def test_shipped_sharegpt_trace() -> None:
    tr = load_lengths(DatasetRequest("sharegpt"), np.random.default_rng(0), 10)
    assert len(tr) > 15000
    assert tr.input_tokens.min() >= 2 and tr.output_tokens.min() >= 2
    assert (tr.input_tokens + tr.output_tokens).max() <= 3000


def test_azure_traces_have_timestamps() -> None:
    for name in ("azure-conv", "azure-code"):
        tr = load_lengths(DatasetRequest(name), np.random.default_rng(0), 10)
        assert tr.arrival_s is not None and tr.arrival_s[0] == 0 and np.all(np.diff(tr.arrival_s) >= 0)


def test_csv_loader_names_offending_row(tmp_path: Path) -> None:
    p = tmp_path / "w.csv"
    p.write_text("input_tokens,output_tokens\n10,5\n12,-3\n")
    with pytest.raises(UserError, match="row 3.*output_tokens"):
        read_length_csv(p)
    p.write_text("input,output\n1,2\n")
    with pytest.raises(UserError, match="lacks column"):
        read_length_csv(p)
    p.write_text("input_tokens,output_tokens,arrival_s\n10,5,0.5\n12,3,0.1\n")
    tr = read_length_csv(p)
    assert tr.arrival_s is not None
    assert list(tr.arrival_s) == [0.0, 0.4] and list(tr.input_tokens) == [12, 10]


def test_random_dataset_ranges() -> None:
    tr = load_lengths(DatasetRequest("random", random_input_len=100, random_output_len=10,
                                     random_range_ratio=0.5), np.random.default_rng(0), 500)
    assert tr.input_tokens.min() >= 50 and tr.input_tokens.max() <= 100
    assert tr.output_tokens.min() >= 5 and tr.output_tokens.max() <= 10


@pytest.mark.parametrize("process", ["poisson", "gamma", "constant"])
def test_arrival_rates_and_seeding(process: str) -> None:
    t1 = arrival_times(process, 50.0, np.random.default_rng(1), duration_s=200.0, burstiness=0.5)
    t2 = arrival_times(process, 50.0, np.random.default_rng(1), duration_s=200.0, burstiness=0.5)
    assert np.array_equal(t1, t2)
    assert len(t1) / 200.0 == pytest.approx(50.0, rel=0.05)
    assert t1[-1] < 200.0 and np.all(np.diff(t1) >= 0)


def test_gamma_burstiness_raises_variance() -> None:
    rng = np.random.default_rng(0)
    g = np.diff(arrival_times("gamma", 50.0, rng, num_requests=20000, burstiness=0.25))
    p = np.diff(arrival_times("poisson", 50.0, rng, num_requests=20000))
    assert np.std(g) > 1.5 * np.std(p)


def test_trace_arrivals_are_time_scaled() -> None:
    tr = load_lengths(DatasetRequest("azure-conv"), np.random.default_rng(0), 10)
    wl = build_workload(tr, "trace", 20.0, np.random.default_rng(0), duration_s=60.0)
    assert len(wl) / 60.0 == pytest.approx(20.0, rel=0.25)
    with pytest.raises(UserError, match="timestamps"):
        build_workload(load_lengths(DatasetRequest("sharegpt"), np.random.default_rng(0), 10), "trace", 5.0,
                       np.random.default_rng(0), duration_s=10.0)


def test_bad_rates_and_counts() -> None:
    with pytest.raises(UserError, match="> 0"):
        arrival_times("poisson", 0.0, np.random.default_rng(0), duration_s=1.0)
    with pytest.raises(UserError, match="unknown arrival"):
        arrival_times("weibull", 1.0, np.random.default_rng(0), duration_s=1.0)


def test_dataset_registry_names_and_duplicates() -> None:
    assert set(DATASETS) == {"sharegpt", "azure-conv", "azure-code", "random", "csv"}
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("random")(DATASETS["random"])
    with pytest.raises(UserError, match="azure-code, azure-conv, csv, random, sharegpt") as exc:
        load_lengths(DatasetRequest("nope"), np.random.default_rng(0), 10)
    assert exc.value.field == "dataset"


def test_package_exports_resolve() -> None:
    import voltana_cli.core.workloads as wl

    assert all(hasattr(wl, name) for name in wl.__all__)
    assert len(set(wl.__all__)) == len(wl.__all__)
