"""Where shipped data lives: inside the installed wheel, or beside the package in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent


def shipped_dir(name: str) -> Path:
    """Return the folder of shipped data ``name`` (``workloads`` or ``profiles``)."""
    installed = _PKG / "_shipped" / name
    if installed.is_dir():
        return installed
    return _PKG.parent / name


def data_dir() -> Path:
    """The folder of hardware and model spec files (``gpus/``, ``models/``)."""
    return _PKG / "data"
