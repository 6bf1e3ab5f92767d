"""Commands that arrive in a later version. They say so and exit 2: no fake output."""

from __future__ import annotations

import typer

_PLANNED = {
    "profile": "measures prefill/decode latency and energy across GPU clocks (sim, torch and sglang backends)",
    "tune": "fits EcoPred predictors from a profile and auto-tunes the controller and router by simulation",
    "serve": "launches an SGLang P/D cluster with voltana's clock controller and energy-aware router",
}


def not_yet(name: str) -> None:
    typer.echo(
        f"error: 'voltana {name}' arrives in a later version ({_PLANNED[name]}); "
        "today, use 'voltana bench' on the simulator",
        err=True,
    )
    raise typer.Exit(2)
