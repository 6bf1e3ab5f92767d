"""Token-length traces: the ``LengthTrace`` every dataset yields, and the CSV readers.

- ``read_length_csv``: any CSV of ``input_tokens,output_tokens[,arrival_s]`` (also the shipped ShareGPT trace);
- ``read_azure_trace``: an Azure LLM inference trace 2023 (``TIMESTAMP,ContextTokens,GeneratedTokens``).

A missing or unreadable file is a ``UserError`` about ``dataset_path``; a file whose content is wrong is a
``UserError`` without a field that names the file (and, for a bad value, its row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from voltana_cli.core.errors import UserError

#: Columns a token-length CSV needs; ``arrival_s`` is optional.
LENGTH_COLUMNS = ("input_tokens", "output_tokens")
#: Columns an Azure LLM inference trace needs.
AZURE_COLUMNS = ("ContextTokens", "GeneratedTokens", "TIMESTAMP")


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


def _read_csv(path: Path, missing_fix: str) -> pd.DataFrame:
    """``pd.read_csv`` whose failures are ``UserError``s; ``missing_fix`` says what to do if ``path`` is absent."""
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: {missing_fix}", field="dataset_path") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable CSV ({msg}): fix the file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): give a readable CSV file", field="dataset_path") from None


#: No model has a context near this: a larger token count is a broken file, not a request (and would overflow).
MAX_TOKENS = 10_000_000


def _as_numbers(column: pd.Series, minimum: float, tokens: bool) -> tuple[pd.Series, int | None]:
    """``column`` as numbers, and the row of its first value that is not a finite number >= ``minimum``
    (for ``tokens``: also a whole number up to ``MAX_TOKENS``), or ``None`` when all are."""
    vals = pd.to_numeric(column, errors="coerce")
    bad = vals.isna() | ~np.isfinite(vals.to_numpy(dtype=float, na_value=np.nan)) | (vals < minimum)
    if tokens:
        bad |= (vals != np.floor(vals)) | (vals > MAX_TOKENS)
    return vals, (int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else None)


def _numeric_column(df: pd.DataFrame, col: str, path: Path) -> pd.Series:
    """Column ``col`` as numbers; the first bad value is a ``UserError`` naming its row and line."""
    vals, row = _as_numbers(df[col], 0 if col == "arrival_s" else 1, tokens=col != "arrival_s")
    if row is not None:
        what = "a non-negative number" if col == "arrival_s" else f"a whole number from 1 to {MAX_TOKENS:,}"
        # Row 1 is the header, so data row i (0-based) is on line i + 2 of the file.
        raise UserError(f"{path} row {row + 2} (line {row + 2}): column {col} is '{df[col].iloc[row]}', expected {what}")
    return vals


def read_length_csv(path: Path, name: str | None = None) -> LengthTrace:
    """Read a CSV of ``input_tokens,output_tokens[,arrival_s]``.

    Rows with ``arrival_s`` are sorted by it (stably) and shifted to start at 0.

    Args:
        path: the CSV file.
        name: the trace's display name (default ``csv:<file name>``).

    Raises:
        UserError: the file is missing or unreadable (``dataset_path``), lacks a column, has no rows, or a
            value is not a whole number >= 1 (an arrival time, a number >= 0); the message names the row.
    """
    df = _read_csv(path, "give an existing CSV file")
    missing = [c for c in LENGTH_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{path} lacks column(s) {', '.join(missing)}: the CSV needs input_tokens,output_tokens[,arrival_s]"
        )
    if len(df) == 0:
        raise UserError(f"{path} has no rows: add at least one request")
    cols = [*LENGTH_COLUMNS] + (["arrival_s"] if "arrival_s" in df.columns else [])
    for c in cols:
        df[c] = _numeric_column(df, c, path)
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
    """Read an Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    Requests are sorted by timestamp (stably), times start at 0, and rows with no context or no generated
    token are dropped.

    Raises:
        UserError: the file is missing or unreadable (``dataset_path``), or lacks the trace's columns.
    """
    df = _read_csv(path, "reinstall voltana, or give the path of an Azure LLM inference trace CSV")
    if not set(AZURE_COLUMNS).issubset(df.columns):
        raise UserError(f"{path} is not an Azure LLM trace: it needs columns {', '.join(AZURE_COLUMNS)}")
    if df.empty:
        raise UserError(f"{path} has the trace's columns but no rows: give a trace with requests", field="dataset_path")
    try:
        ts = pd.to_datetime(df["TIMESTAMP"], format="mixed")
    except (ValueError, TypeError, OverflowError):
        bad = _first_bad(df["TIMESTAMP"], lambda v: pd.to_datetime(v, format="mixed"))
        raise UserError(f"{path} row {bad + 2}: TIMESTAMP {df['TIMESTAMP'].iloc[bad]!r} is not a date and time "
                        "(e.g. 2023-11-16 18:15:46.6805900)", field="dataset_path") from None
    t = (ts - ts.iloc[0]).dt.total_seconds().to_numpy()
    order = np.argsort(t, kind="stable")
    counts: dict[str, np.ndarray] = {}
    for col in ("ContextTokens", "GeneratedTokens"):
        num, row = _as_numbers(df[col], 0, tokens=True)
        if row is not None:
            raise UserError(f"{path} row {row + 2}: {col} '{df[col].iloc[row]}' is not a whole number of tokens "
                            f"from 0 to {MAX_TOKENS:,}", field="dataset_path")
        counts[col] = num.to_numpy(dtype=np.int64)
    inp = counts["ContextTokens"][order]
    out = counts["GeneratedTokens"][order]
    t = t[order] - t[order][0]
    keep = (inp >= 1) & (out >= 1)
    return LengthTrace(
        input_tokens=inp[keep], output_tokens=out[keep], arrival_s=t[keep], name=name,
        notes=("Azure LLM inference trace 2023, CC-BY-4.0, Patel et al., Splitwise, ISCA 2024",),
    )


def _first_bad(values: pd.Series, parse: Callable[[object], object]) -> int:
    """Index of the first value ``parse`` rejects (0 if none does, which the caller's failure rules out)."""
    for i, v in enumerate(values):
        try:
            parse(v)
        except (ValueError, TypeError, OverflowError):
            return i
    return 0
