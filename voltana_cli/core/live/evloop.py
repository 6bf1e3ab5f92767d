"""An asyncio event loop whose timers fire on time (to the millisecond) on Linux.

Python's ``selectors.EpollSelector`` rounds a timeout up to whole milliseconds and hands the result to
``epoll.poll`` as float seconds, which rounds it up again: ``k * 1e-3`` is often a hair above k ms, so
the wait becomes k + 1 ms. Every ``asyncio.sleep`` of the default loop then ends 1-2 ms late (mean about
1.8 ms for a 12 ms sleep, against about 0.8 ms with one rounding). An emulated engine that sleeps once per
iteration would run every iteration that much longer than its model says.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _OnceRoundedEpoll:
    """An ``epoll`` object whose ``poll`` takes the selector's already rounded timeout as it is."""

    def __init__(self, ep: Any):
        self._ep = ep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ep, name)

    def poll(self, timeout: float | None = -1, maxevents: int = -1) -> Any:
        if timeout is not None and timeout > 0:
            timeout -= 1e-6  # k ms exactly once rounded up is k ms, not k + 1
        return self._ep.poll(timeout, maxevents)


def selector() -> selectors.BaseSelector:
    """The default selector; an epoll one rounds its timeouts once."""
    sel = selectors.DefaultSelector()
    ep = getattr(sel, "_selector", None)  # the epoll object (a private attribute: left alone if it moves)
    if isinstance(sel, selectors.EpollSelector) and ep is not None and hasattr(ep, "poll"):
        sel._selector = _OnceRoundedEpoll(ep)  # type: ignore[attr-defined]
    return sel


def new_event_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(selector())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on ``new_event_loop()``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
