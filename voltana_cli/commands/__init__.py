"""Thin CLI commands: parse options, call one core function, render."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from voltana_cli.core.errors import UserError
from voltana_cli.core.report import to_stdout


def flag_for(field: str, flags: Mapping[str, str]) -> str:
    """The command-line flag of a core field: ``flags[field]`` when the command names it, else
    ``--field-with-dashes`` (core fields and flags share names unless the command says otherwise)."""
    return flags.get(field) or "--" + field.replace("_", "-")


@contextmanager
def user_errors(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn a ``UserError`` into one line on stderr and exit code 2.

    Args:
        flags: this command's map from core field names to its flags, for fields whose flag differs from
            ``--field-name`` (e.g. ``{"n_prefill": "--prefill"}``).
    """
    try:
        yield
    except UserError as exc:
        msg = f"{flag_for(exc.field, flags or {})}: {exc.problem}" if exc.field else str(exc)
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None


def say_written(console: Console, *paths: Path | None) -> None:
    """``wrote PATH`` for each output that was written to a file (standard output, ``-``, says nothing)."""
    for path in paths:
        if path is not None and not to_stdout(path):
            console.print(f"wrote {path}")


def progress_bar(console: Console) -> Progress:
    """The commands' progress bar on ``console``: a description, the bar, done/total and the elapsed time; it
    disappears when done."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=True)
