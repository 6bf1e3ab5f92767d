"""The ``voltana`` command line (typer + rich). Commands stay thin; the work is in ``voltana_cli.core``."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import typer

from voltana_cli import __version__
from voltana_cli.commands.bench import bench
from voltana_cli.commands.profile import profile
from voltana_cli.commands.serve import serve
from voltana_cli.commands.tune import tune

app = typer.Typer(
    name="voltana",
    help="Cut the GPU energy of LLM serving while keeping latency SLOs (prefill/decode clusters).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"voltana {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """voltana: energy-efficient LLM serving."""


app.command(help="Replay a workload (sharegpt, azure-conv, ...) on a simulated P/D cluster; report energy and "
                 "SLO attainment per policy.")(bench)


app.command(help="Measure (torch) or model (sim) prefill and decode latency and energy across GPU clocks; "
                 "write profiles/<gpu>/<model>/.")(profile)
app.command(help="Tune the feedback controller's and router's knobs by simulation and validate them on held-out "
                 "traffic; --fit-only fits EcoPred from a profile.")(tune)


app.command(help="Launch a prefill/decode cluster (stock SGLang, or emulated engines with --engine sim) behind "
                 "voltana's router; --dry-run prints the plan.")(serve)


def _usage_message(exc: Exception) -> str:
    """click's message for a bad value, in the one form voltana uses: ``--flag: what is wrong``."""
    param = getattr(exc, "param", None)
    opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
    message = getattr(exc, "message", None)
    if opts and message:
        return f"{opts[0]}: {message}"
    return str(exc.format_message())  # type: ignore[attr-defined]


#: The exit status of a run stopped by Ctrl-C (128 + SIGINT).
_INTERRUPTED = 130


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Console-script entry point: click's usage errors become one line and exit code 2.

    SIGTERM and SIGHUP end the command as ``SystemExit(128 + n)`` rather than killing it outright, so every
    ``finally`` runs: clocks are reset (``hardware.ClockGuard`` also guards its own scope) and an unfinished
    result file's temporary copy is removed.
    """
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, _exit_on_signal)
    try:
        rv = app(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        rv = _INTERRUPTED
    except Exception as exc:
        # click's UsageError (typer vendors click in recent releases): match it by shape, not by import.
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            message = _usage_message(exc)
            if not message.strip():  # no command at all: the help was shown; say what is missing
                names = ", ".join(sorted(c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands))
                message = f"no command given: choose one of {names}"
            typer.echo(f"error: {message}{hint}", err=True)
            sys.exit(2)
        raise
    if rv == _INTERRUPTED:  # typer turns Ctrl-C inside a command into a return of 130
        cmd = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        typer.echo(f"interrupted: voltana {cmd} stopped; a result it had not written yet was not written (no partial "
                   "files), and any clock it changed was reset", err=True)
    sys.exit(rv if isinstance(rv, int) else 0)
