"""Profiles: measured (or modelled) prefill and decode iterations across GPU clocks.

A profile is a directory ``profiles/<gpu>/<model>/`` holding two files:

- ``profile.csv``: one row per timed measurement, units in the column names: ``phase`` (prefill | decode),
  ``clock_mhz``, ``batch_size`` (sequences in the batch), ``num_tokens`` (prefill: tokens in the batch;
  decode: KV tokens of the running batch), ``latency_ms``, ``energy_j`` and ``power_w`` (empty when the
  backend had no energy counter: "unavailable", never 0), ``repeat`` (0-based index of the repetition).
- ``metadata.yaml``: what was measured and how (``ProfileMeta``).

Loading validates both and names the offending file, column and line on error.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voltana_cli.core.errors import UserError, validation_problem
from voltana_cli.core.paths import shipped_dir
from voltana_cli.core.report import write_text

PROFILE_CSV = "profile.csv"
METADATA_YAML = "metadata.yaml"
SCHEMA_VERSION = 1
COLUMNS = ("phase", "clock_mhz", "batch_size", "num_tokens", "latency_ms", "energy_j", "power_w", "repeat")
PHASES = ("prefill", "decode")
#: Where profiles go when no directory is given (relative to the working directory).
PROFILES_ROOT = Path("profiles")


class Protocol(BaseModel):
    """How the measurements were taken."""

    model_config = ConfigDict(extra="forbid")

    warmup: int = Field(ge=0, description="untimed runs before each measured configuration")
    repeats: int = Field(ge=1, description="measured repetitions per configuration")
    cooldown_s: float = Field(ge=0, description="pause after each clock change before measuring")
    min_window_s: float = Field(ge=0, description="each timed window is repeated until it lasts this long")
    noise: float | None = Field(default=None, ge=0, description="sim backend: lognormal sigma of latency")


class ProfileMeta(BaseModel):
    """The metadata file. No UUIDs or host names: a profile identifies a GPU model, not a card."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    gpu: str = Field(description="voltana GPU key (e.g. a100-80g-sxm4) or a slug of the device name")
    gpu_name: str
    driver: str | None = None
    power_limit_w: float | None = None
    clocks_available_mhz: list[int] = Field(default_factory=list)
    memory_clock_mhz: int | None = None
    tp: int = Field(default=1, ge=1)
    engine: str
    engine_version: str | None = None
    model: str
    dtype: str = "bfloat16"
    backend: Literal["sim", "torch", "sglang"]
    device: str = Field(description="where it ran: emulated, cpu, cuda:0, or an SGLang URL")
    protocol: Protocol
    clocks_locked: bool = Field(description="whether the SM clock was actually locked to clock_mhz")
    clock_note: str = ""
    voltana_version: str
    created: str
    notes: list[str] = Field(default_factory=list)


@dataclass
class Profile:
    """A validated profile: the table (columns as ``COLUMNS``) and its metadata."""

    data: pd.DataFrame
    meta: ProfileMeta
    source: str = "<memory>"

    def phase(self, phase: str) -> pd.DataFrame:
        """The rows of one phase (prefill or decode)."""
        return self.data[self.data["phase"] == phase]

    @property
    def clocks_mhz(self) -> list[int]:
        """The profiled clocks, ascending."""
        return sorted(int(c) for c in self.data["clock_mhz"].unique())

    @property
    def has_energy(self) -> bool:
        """Whether any row has an energy reading."""
        return bool(self.data["energy_j"].notna().any())


def now_iso() -> str:
    """The current UTC time to the second, ISO 8601 (a profile's ``created``)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def window_row(phase: str, clock: int, b: int, tokens: int, lat_s: float, energy_j: float | None, r: int) -> dict:
    """One row of the profile table from a timed window.

    Args:
        phase: prefill or decode.
        clock: the SM clock the row is recorded at, in MHz.
        b: sequences in the batch.
        tokens: prefill: tokens in the batch; decode: KV tokens of the batch.
        lat_s: latency of one iteration, in seconds.
        energy_j: energy of one iteration, in joules; ``None``, non-finite or not positive means the counter
            gave no reading, recorded as unavailable (never as 0).
        r: 0-based index of the repetition.
    """
    ok = energy_j is not None and math.isfinite(energy_j) and energy_j > 0
    return {
        "phase": phase, "clock_mhz": int(clock), "batch_size": int(b), "num_tokens": int(tokens),
        "latency_ms": lat_s * 1e3, "energy_j": energy_j if ok else math.nan,
        "power_w": energy_j / lat_s if ok and energy_j is not None else math.nan, "repeat": r,
    }


def make_frame(rows: list[dict]) -> pd.DataFrame:
    """A profile table from row dicts (missing energy/power become empty)."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("clock_mhz", "batch_size", "num_tokens", "repeat"):
        df[col] = df[col].astype(np.int64)
    for col in ("latency_ms", "energy_j", "power_w"):
        df[col] = df[col].astype(float)
    return df


# ---- validation -------------------------------------------------------------------------------------
def validate_frame(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check a raw table (strings allowed) and return it typed; errors name the column and the CSV line."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{where}: missing column {missing[0]!r}; a profile needs the columns {', '.join(COLUMNS)}")
    extra = [c for c in df.columns if c not in COLUMNS]
    if extra:
        raise UserError(f"{where}: unknown column {extra[0]!r}; a profile has only the columns {', '.join(COLUMNS)}")
    if df.empty:
        raise UserError(f"{where}: the profile has no rows")
    out = pd.DataFrame(index=df.index)

    def line(i: int) -> int:  # CSV line of data row i (the header is line 1)
        return int(i) + 2

    phase = df["phase"].astype(str).str.strip()
    bad = ~phase.isin(PHASES)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{where} line {line(i)}: column 'phase' is {df['phase'].iloc[i]!r}; use prefill or decode")
    out["phase"] = phase

    def numeric(col: str, *, integer: bool, optional: bool, minimum: float, strict: bool) -> pd.Series:
        raw = df[col]
        vals = pd.to_numeric(raw, errors="coerce")
        blank = raw.isna() | (raw.astype(str).str.strip() == "")
        unparsable = vals.isna() & ~blank
        if unparsable.any():
            i = int(np.flatnonzero(unparsable.to_numpy())[0])
            raise UserError(f"{where} line {line(i)}: column {col!r} is {raw.iloc[i]!r}, not a number")
        if blank.any() and not optional:
            i = int(np.flatnonzero(blank.to_numpy())[0])
            raise UserError(f"{where} line {line(i)}: column {col!r} is empty; it needs a value")
        v = vals.to_numpy(dtype=float)
        nonfinite = ~np.isfinite(v) & ~blank.to_numpy()
        if nonfinite.any():
            i = int(np.flatnonzero(nonfinite)[0])
            raise UserError(f"{where} line {line(i)}: column {col!r} is {raw.iloc[i]!r}; it must be finite")
        low = (v <= minimum) if strict else (v < minimum)
        low &= ~blank.to_numpy()
        if low.any():
            i = int(np.flatnonzero(low)[0])
            cmp = ">" if strict else ">="
            hint = " (leave it empty when no energy counter was available)" if optional else ""
            raise UserError(f"{where} line {line(i)}: column {col!r} is {raw.iloc[i]!r}; it must be {cmp} {minimum:g}{hint}")
        if integer:
            frac = (v != np.round(v)) & ~blank.to_numpy()
            if frac.any():
                i = int(np.flatnonzero(frac)[0])
                raise UserError(f"{where} line {line(i)}: column {col!r} is {raw.iloc[i]!r}; it must be a whole number")
            return pd.Series(v.astype(np.int64), index=df.index)
        return pd.Series(v, index=df.index)

    out["clock_mhz"] = numeric("clock_mhz", integer=True, optional=False, minimum=0, strict=True)
    out["batch_size"] = numeric("batch_size", integer=True, optional=False, minimum=0, strict=True)
    out["num_tokens"] = numeric("num_tokens", integer=True, optional=False, minimum=0, strict=False)
    out["latency_ms"] = numeric("latency_ms", integer=False, optional=False, minimum=0, strict=True)
    out["energy_j"] = numeric("energy_j", integer=False, optional=True, minimum=0, strict=True)
    out["power_w"] = numeric("power_w", integer=False, optional=True, minimum=0, strict=True)
    out["repeat"] = numeric("repeat", integer=True, optional=False, minimum=0, strict=False)
    pre = (out["phase"] == "prefill").to_numpy()
    short = pre & (out["num_tokens"].to_numpy() < out["batch_size"].to_numpy())
    if short.any():
        i = int(np.flatnonzero(short)[0])
        raise UserError(
            f"{where} line {line(i)}: a prefill of {out['batch_size'].iloc[i]} sequences needs at least as many "
            f"tokens, but column 'num_tokens' is {out['num_tokens'].iloc[i]}"
        )
    return out[list(COLUMNS)].reset_index(drop=True)


def _load_meta(path: Path) -> ProfileMeta:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8); a profile's metadata is YAML") from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of metadata fields")
    if raw.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema_version {raw.get('schema_version')!r} is not supported; this voltana reads {SCHEMA_VERSION}"
        )
    try:
        return ProfileMeta.model_validate(raw)
    except ValidationError as exc:
        loc, msg = validation_problem(exc)
        raise UserError(f"{path}: field {loc!r}: {msg}") from None


def resolve_profile_dir(spec: str | Path) -> Path:
    """A profile directory from a path (directory or its profile.csv) or a shipped ``<gpu>/<model>`` name."""
    p = Path(spec)
    if p.is_file() and p.name == PROFILE_CSV:
        return p.parent
    if p.is_dir():
        return p
    shipped = shipped_dir("profiles") / str(spec)
    if shipped.is_dir() and (shipped / PROFILE_CSV).is_file():
        return shipped
    raise UserError(
        f"profile {str(spec)!r} not found: give a directory holding {PROFILE_CSV} and {METADATA_YAML}, "
        f"or a shipped profile ({', '.join(available_profiles()) or 'none shipped'})"
    )


def available_profiles() -> list[str]:
    """The shipped profiles, as ``<gpu>/<model>`` names ``load_profile`` accepts."""
    root = shipped_dir("profiles")
    if not root.is_dir():
        return []
    return sorted(str(p.parent.relative_to(root)) for p in root.glob(f"*/*/{PROFILE_CSV}"))


def load_profile(spec: str | Path) -> Profile:
    """Load and validate a profile (see ``resolve_profile_dir``)."""
    d = resolve_profile_dir(spec)
    csv_path, meta_path = d / PROFILE_CSV, d / METADATA_YAML
    if not csv_path.is_file():
        raise UserError(f"{d}: no {PROFILE_CSV} in this directory; a profile needs {PROFILE_CSV} and {METADATA_YAML}")
    if not meta_path.is_file():
        raise UserError(f"{d}: no {METADATA_YAML} beside {PROFILE_CSV}; a profile needs both (`voltana profile` writes them)")
    meta = _load_meta(meta_path)
    try:
        raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{csv_path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{csv_path}: the file is empty; it needs a header row {','.join(COLUMNS)}") from None
    raw = raw.replace("", np.nan)
    data = validate_frame(raw, str(csv_path))
    _check_clocks(data, meta, csv_path)
    return Profile(data, meta, str(d))


def _check_clocks(data: pd.DataFrame, meta: ProfileMeta, csv_path: Path) -> None:
    """Rows must be at clocks the GPU has (when the metadata lists them): a profile is used as the truth."""
    if not meta.clocks_available_mhz:
        return
    bad = ~data["clock_mhz"].isin(meta.clocks_available_mhz)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{csv_path} line {i + 2}: clock_mhz {int(data['clock_mhz'].iloc[i])} is not one of the GPU's "
                        f"clocks listed in {METADATA_YAML} ({meta.clocks_available_mhz[0]}-{meta.clocks_available_mhz[-1]} "
                        "MHz in its steps)")


# ---- writing ------------------------------------------------------------------------------------------
def profile_csv_text(df: pd.DataFrame) -> str:
    """The CSV text of a profile table: floats to 6 significant digits, unavailable values as empty cells."""
    buf = io.StringIO()
    out = df[list(COLUMNS)].copy()
    for col in ("latency_ms", "energy_j", "power_w"):
        out[col] = [("" if (v is None or (isinstance(v, float) and math.isnan(v))) else f"{v:.6g}") for v in out[col]]
    out.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def default_profile_dir(gpu: str, model: str) -> Path:
    """``profiles/<gpu>/<model>``, a model id's "/" (a Hugging Face id) written as "--"."""
    return PROFILES_ROOT / gpu / model.replace("/", "--")


def check_profile_out(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite an existing profile unless forced; fail before any measuring starts.

    Args:
        out_dir: the directory the profile will be written to.
        force: whether a profile already there may be replaced.

    Raises:
        UserError: about ``out_dir`` (not a directory, not writable) or ``force`` (a profile is there).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; choose a directory path", field="out_dir")
    if not force and (out_dir / PROFILE_CSV).exists():
        raise UserError(f"is needed to replace the profile in {out_dir} (or choose another directory)", field="force")
    parent = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"{out_dir}: {parent} is a file, so no directory can be made under it; choose another path",
                        field="out_dir")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{out_dir}: {parent} is not writable; choose a directory you can write to", field="out_dir")


def write_profile(profile: Profile, out_dir: str | Path) -> Path:
    """Write ``profile.csv`` and ``metadata.yaml`` into ``out_dir`` (each replaced atomically; the
    metadata last, so a reader never sees new metadata over an old table)."""
    d = Path(out_dir)
    validate_frame(profile.data, "profile")
    d.mkdir(parents=True, exist_ok=True)
    write_text(d / PROFILE_CSV, profile_csv_text(profile.data))
    meta = profile.meta.model_dump(mode="json")
    write_text(d / METADATA_YAML, yaml.safe_dump(meta, sort_keys=False, width=110, default_flow_style=None))
    return d


def summary_frame(profile: Profile) -> pd.DataFrame:
    """Per (phase, clock): rows, latency range, mean power, energy per token (J/token; NaN if unavailable)."""
    df = profile.data
    rows = []
    for key, g in df.groupby(["phase", "clock_mhz"], sort=True):
        phase, clock = cast(tuple[str, int], key)
        tokens = g["batch_size"] if phase == "decode" else g["num_tokens"]
        e_tok = (g["energy_j"] / tokens).mean() if g["energy_j"].notna().any() else math.nan
        rows.append({
            "phase": phase, "clock_mhz": int(clock), "rows": len(g),
            "latency_min_ms": float(g["latency_ms"].min()), "latency_max_ms": float(g["latency_ms"].max()),
            "power_w": float(g["power_w"].mean()) if g["power_w"].notna().any() else math.nan,
            "energy_per_token_mj": e_tok * 1e3,
        })
    return pd.DataFrame(rows)
