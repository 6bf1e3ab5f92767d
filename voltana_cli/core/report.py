"""Writing results: atomic JSON/CSV/PNG files, checked before a run so nothing is half-written."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from voltana_cli.core.errors import UserError
from voltana_cli.core.metrics import RequestLog

#: The output path that means standard output.
STDOUT = "-"


def to_stdout(path: Path | str | None) -> bool:
    """Whether an output path is ``-``, standard output (written once, when the result is complete)."""
    return path is not None and str(path) == STDOUT


def check_writable(path: Path, name: str) -> None:
    """Fail early (before any work) when ``path`` cannot be written.

    A symbolic link is followed (the file it points to is what gets replaced, the link stays). An existing
    target that is not a regular file (a FIFO, a terminal, ``/dev/stdout``, a process-substitution pipe)
    is written in place and must be writable.

    Args:
        path: the output file.
        name: the output's field (``json``, ``csv``, ``plot``, ``out``). A flag spelling (``--json``) is
            accepted too, while commands move to passing fields.

    Raises:
        UserError: about field ``name``: ``path`` is a directory, or its folder is missing or not writable.
    """
    field = name.lstrip("-").replace("-", "_")
    if to_stdout(path):
        return
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise UserError(f"{path} is a directory: give a file path", field=field)
    if _in_place(path):
        if not os.access(path, os.W_OK):
            raise UserError(f"{path} cannot be written: choose another path", field=field)
        return
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{parent} is a file, so {path} cannot be made: choose another path", field=field)
    if not parent.is_dir():
        raise UserError(f"the folder {parent} of {path} does not exist: create it first", field=field)
    if not os.access(parent, os.W_OK):
        raise UserError(f"the folder {parent} of {path} is not writable: choose another path", field=field)


def check_outputs(outputs: dict[str, Path | None]) -> None:
    """``check_writable`` for each named output, and no two of them the same file (one would be lost).

    Raises:
        UserError: about the first output that cannot be written or that repeats an earlier one.
    """
    seen: dict[str, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        check_writable(path, name)
        key = STDOUT if to_stdout(path) else os.path.realpath(path)
        if key in seen:
            raise UserError(f"{path} is also the {seen[key]} output: give each output its own file", field=name)
        seen[key] = name


def _file_mode(target: Path) -> int:
    """The mode a result file gets: the replaced file's, else what ``open`` would give under the umask."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _in_place(path: Path) -> bool:
    """Whether ``path`` is a stream to append to rather than a file to replace: an existing target that is
    not a regular file (FIFO, terminal, device, pipe), or a file descriptor's name (``/dev/stdout``,
    ``/dev/fd/N``, ``/proc/...``) even when it leads to a regular file, which its owner keeps writing; and
    ``-``, standard output."""
    if to_stdout(path):
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return True
    return str(path).startswith(("/dev/", "/proc/")) or os.path.realpath(path).startswith("/proc/")


_FD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def _descriptor(path: Path) -> int | None:
    """The open file descriptor a path names (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``), if any."""
    text = str(path)
    if text in _FD_NAMES:
        return _FD_NAMES[text]
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix) and text[len(prefix):].isdigit():
            return int(text[len(prefix):])
    return None


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to a stream. A descriptor's name is written through that descriptor, sharing its
    offset with everything else this process writes there (reopening ``/dev/stdout`` would not)."""
    if to_stdout(path):  # through sys.stdout, wherever the caller pointed it
        sys.stdout.flush()
        buf = getattr(sys.stdout, "buffer", None)
        if buf is not None:
            buf.write(data)
            buf.flush()
        else:
            sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()
        return
    fd = _descriptor(path)
    if fd is None:
        with open(path, "ab") as f:
            f.write(data)
        return
    if fd in (1, 2):
        (sys.stdout if fd == 1 else sys.stderr).flush()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file in its folder, so a failed or interrupted write leaves the old
    file whole and no temporary file behind. A symbolic link is followed and kept. A stream (``_in_place``)
    cannot be replaced: the result is rendered to a private temporary file first, then appended to it."""
    if _in_place(path):
        with tempfile.TemporaryDirectory(prefix="voltana-") as d:
            rendered = Path(d) / "out"
            write(rendered)
            try:
                _append(path, rendered.read_bytes())
            except OSError as exc:
                raise UserError(f"writing {path} failed: {exc.strerror or exc}") from None
        return
    target = Path(os.path.realpath(path))
    try:
        mode = _file_mode(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise UserError(f"writing {path} failed: {exc.strerror or exc}; the file was left as it was") from None


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


@dataclass
class Timeline:
    """One run recorded for a clock timeline: what it is (``label``) and its log with traces."""

    label: str
    log: RequestLog


#: Seconds of a run a timeline shows (from 40 % into the run): enough iterations to see the control act,
#: few enough to see each one.
TIMELINE_WINDOW_S = 10.0


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend; a ``UserError`` naming the extra when it is missing (call it
    before any output is written, so a missing plotting library leaves nothing half-written)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("writing a plot needs matplotlib: pip install 'voltana[plot]'", field="plot") from None
    return plt


def write_sweep_plot(path: Path, report: dict, timeline: Timeline | None = None) -> None:
    """Energy and SLO attainment against request rate, one line per policy (like the paper's Fig. 8); with
    ``timeline``, a second row: clock and batch against time of one prefill and one decode instance of that
    run (like the paper's timeline figure)."""
    plt = pyplot()
    runs = report["runs"]
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    rows = 2 if timeline is not None else 1
    fig = plt.figure(figsize=(14, 4 * rows))
    grid = fig.add_gridspec(rows, 6)
    axes = [fig.add_subplot(grid[0, 2 * i:2 * i + 2]) for i in range(3)]
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
    if timeline is not None:
        _timeline_row(fig, grid, timeline)
    fig.suptitle(f"{cfg['model']} on {cfg['n_prefill']}P{cfg['n_decode']}D {cfg['gpu']}, {cfg['dataset']} (simulated)")
    fig.tight_layout()
    _atomic(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def _timeline_row(fig: Any, grid: Any, tl: Timeline) -> None:
    """Clock (left axis) and batch (right axis) against time, one panel per instance shown."""
    log = tl.log
    shown = [next((r for r in log.instances if r.role == role), None) for role in ("prefill", "decode")]
    picked = [r for r in shown if r is not None] or log.instances[:1]  # colocated: one instance, both phases
    t0 = log.start_s + 0.4 * (log.end_s - log.start_s)
    t1 = min(t0 + TIMELINE_WINDOW_S, log.end_s)
    width = 6 // len(picked)
    for i, rec in enumerate(picked):
        ax = fig.add_subplot(grid[1, i * width:(i + 1) * width])
        # The clock held at t0, then every change inside the window (idle drops included).
        held = [c for t, c in rec.timeline if t <= t0]
        points = [(t0, held[-1] if held else rec.timeline[0][1])] + [(t, c) for t, c in rec.timeline if t0 < t <= t1]
        xs = [t - log.start_s for t, _ in points] + [t1 - log.start_s]
        ys = [c for _, c in points] + [points[-1][1]]
        ax.step(xs, ys, where="post", color="tab:red", label="SM clock")
        ax.set_ylabel("SM clock (MHz)", color="tab:red")
        ax.set_xlabel("time (s)")
        it = [(t, b, n) for t, b, n, _ in rec.trace if t0 <= t <= t1]
        twin = ax.twinx()
        prefill = rec.role == "prefill"
        twin.step([t - log.start_s for t, _, _ in it], [n if prefill else b for _, b, n in it], where="post",
                  color="tab:blue", alpha=0.6, linewidth=0.8)
        twin.set_ylabel("batch tokens" if prefill else "batch size (running requests)", color="tab:blue")
        ax.set_title(f"{tl.label}: {rec.role} instance {rec.index}", fontsize=9)
        ax.grid(alpha=0.3)
