"""Writing results: atomic JSON/CSV/PNG files, checked before a run so nothing is half-written."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from voltana_cli.core.errors import UserError

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
