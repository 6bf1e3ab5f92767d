"""Thin CLI commands: parse options, call one core function, render."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from voltana_cli.core.errors import UserError


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``UserError`` into one line on stderr and exit code 2."""
    try:
        yield
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
