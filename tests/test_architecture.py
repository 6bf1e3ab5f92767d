"""Imports point one way (docs/architecture.md): the house stays standing.

- ``core/policy`` is pure: it imports nothing from the worlds (sim, live), the hardware edge, the models'
  implementations, time, randomness, files or the network.
- ``core/models`` imports nothing from the simulator, tune or live worlds, the hardware edge or profiling
  (profiles are data the models read; profiling produces them).
- ``core`` never imports the command line; commands import only packages' public APIs.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "voltana_cli"
CORE_PACKAGES = sorted(p.name for p in (ROOT / "core").iterdir() if (p / "__init__.py").is_file())


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def files(sub: str) -> list[Path]:
    return sorted((ROOT / sub).rglob("*.py"))


POLICY_STDLIB = {"__future__", "collections", "collections.abc", "dataclasses", "typing", "math", "functools",
                 "enum", "bisect", "heapq", "itertools"}


@pytest.mark.parametrize("path", files("core/policy"), ids=lambda p: p.name)
def test_policy_is_pure(path):
    bad = set()
    for mod in imports(path):
        top = mod.split(".")[0]
        if mod.startswith("voltana_cli."):
            if not (mod.startswith("voltana_cli.core.policy") or mod.startswith("voltana_cli.core.errors")):
                bad.add(mod)
        elif top in sys.stdlib_module_names and mod not in POLICY_STDLIB and top not in POLICY_STDLIB:
            bad.add(mod)  # time, random, os, socket, http, subprocess, threading, ...
        elif top not in sys.stdlib_module_names:
            bad.add(mod)  # numpy (its random state), pynvml, ...
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", files("core/models"), ids=lambda p: p.name)
def test_models_do_not_import_the_worlds(path):
    bad = {m for m in imports(path) for pkg in ("sim", "tune", "live", "hardware", "profiling", "bench")
           if m == f"voltana_cli.core.{pkg}" or m.startswith(f"voltana_cli.core.{pkg}.")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", files("core/sim"), ids=lambda p: p.name)
def test_the_simulator_does_not_touch_hardware_or_the_live_world(path):
    bad = {m for m in imports(path) for pkg in ("hardware", "live", "profiling", "tune")
           if m == f"voltana_cli.core.{pkg}" or m.startswith(f"voltana_cli.core.{pkg}.")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", files("core"), ids=lambda p: str(p.relative_to(ROOT / "core")))
def test_core_never_imports_the_command_line(path):
    bad = {m for m in imports(path) if m.startswith(("voltana_cli.commands", "voltana_cli.cli", "typer", "rich"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", [*files("commands"), ROOT / "cli.py"], ids=lambda p: p.name)
def test_commands_import_only_public_apis(path):
    bad = set()
    for mod in imports(path):
        parts = mod.split(".")
        if parts[:2] != ["voltana_cli", "core"] or len(parts) < 4:
            continue
        pkg = parts[2]
        if pkg in CORE_PACKAGES and parts[3] not in _public_names(pkg):
            bad.add(mod)  # a submodule of a package, not a name its __init__ exports
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def _public_names(pkg: str) -> set[str]:
    tree = ast.parse((ROOT / "core" / pkg / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return {ast.literal_eval(e) for e in node.value.elts}  # type: ignore[attr-defined]
    return set()


@pytest.mark.parametrize("pkg", CORE_PACKAGES)
def test_every_core_package_states_its_public_api(pkg):
    names = _public_names(pkg)
    assert names, f"core/{pkg}/__init__.py has no __all__"
    mod = __import__(f"voltana_cli.core.{pkg}", fromlist=["_"])
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"core/{pkg} lists {missing} in __all__ but does not export them"
