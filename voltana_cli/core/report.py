"""Writing results: atomic JSON/CSV/PNG files, checked before a run so nothing is half-written."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from voltana_cli.core.errors import UserError


def check_writable(path: Path, name: str) -> None:
    """Fail early (before any work) when ``path`` cannot be written.

    Args:
        path: the output file.
        name: the output's field (``json``, ``csv``, ``plot``, ``out``). A flag spelling (``--json``) is
            accepted too, while commands move to passing fields.

    Raises:
        UserError: about field ``name``: ``path`` is a directory, or its folder is missing or not writable.
    """
    field = name.lstrip("-").replace("-", "_")
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{path} is a directory: give a file path", field=field)
    if not parent.is_dir():
        raise UserError(f"the folder {parent} of {path} does not exist: create it first", field=field)
    if not os.access(parent, os.W_OK):
        raise UserError(f"the folder {parent} of {path} is not writable: choose another path", field=field)


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file in its folder, so a failed write leaves the old file whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(x: object) -> object:
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (exact bytes, UTF-8, no newline translation)."""
    _atomic(path, lambda p: p.write_bytes(text.encode("utf-8")))


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically; NaN and infinities become ``null``."""
    text = json.dumps(_clean(data), indent=2, sort_keys=False)
    _atomic(path, lambda p: p.write_text(text + "\n"))


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Replace ``path`` with ``df`` as CSV (no index column), atomically."""
    _atomic(path, lambda p: df.to_csv(p, index=False))


def write_sweep_plot(path: Path, report: dict) -> None:
    """Energy and SLO attainment against request rate, one line per policy (like the paper's Fig. 8)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("writing a plot needs matplotlib: pip install 'voltana[plot]'", field="plot") from None
    runs = report["runs"]
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for pol in policies:
        rs = sorted((r for r in runs if r["policy"] == pol), key=lambda r: r["request_rate"])
        x = [r["request_rate"] for r in rs]
        axes[0].plot(x, [r["energy_j"]["total"] / 1e5 for r in rs], marker="o", label=pol)
        axes[1].plot(x, [100 * r["attainment"]["ttft"] for r in rs], marker="o", label=pol)
        axes[2].plot(x, [100 * r["attainment"]["itl"] for r in rs], marker="o", label=pol)
    cfg = report["config"]
    axes[0].set_ylabel("GPU energy (1e5 J)")
    axes[1].set_ylabel(f"TTFT attainment (%), SLO {cfg['slo_ttft_ms']:g} ms")
    axes[2].set_ylabel(f"ITL attainment (%), SLO {cfg['slo_itl_ms']:g} ms")
    for ax in axes:
        ax.set_xlabel("request rate (req/s)")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 102)
    axes[2].set_ylim(0, 102)
    axes[0].legend()
    fig.suptitle(f"{cfg['model']} on {cfg['n_prefill']}P{cfg['n_decode']}D {cfg['gpu']}, {cfg['dataset']} (simulated)")
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
