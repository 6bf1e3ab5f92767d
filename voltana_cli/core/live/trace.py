"""Request-path trace of the live stack: where a request's time goes between the client, the router and the
instances, hop by hop (``python benchmarks/live_vs_sim.py`` prints it).

With ``VOLTANA_TRACE`` set to a path prefix, each live process (the router, the emulated engines, the live
client) appends one JSON line per P/D protocol event to ``<prefix>.<pid>``: ``[event, key, time.monotonic()]``,
the key being the request's bootstrap room (the client's events carry none: they are matched to the router's
in order). Monotonic clocks compare only on one host, so the breakdown is for a stack on one machine. Unset
(the default), ``event`` does nothing.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import IO

_PREFIX = os.environ.get("VOLTANA_TRACE")
_out: IO[str] | None = None

#: The events of one request in the order they happen on its path, with what each hop between two is.
PATH = (("client_sent", "client -> router"), ("router_received", "router -> decode"),
        ("decode_received", "decode: waits for its pre-allocation pass"),
        ("decode_preallocated", "decode -> prefill: the notice (modelled handshake)"),
        ("prefill_released", "prefill: queue, prefill, modelled KV transfer"),
        ("decode_kv_arrived", "decode: waits for its admission pass"),
        ("decode_first_token", "decode -> router: the first token"),
        ("router_first_token", "router -> client: the first token"), ("client_first_token", ""))
#: The hops that are the stack's transport, not the instance model's scheduling.
TRANSPORT = ("client_sent", "router_received", "decode_preallocated", "decode_first_token", "router_first_token")


def event(name: str, key: int | None = None) -> None:
    """Record ``name`` for the request ``key`` now (nothing unless ``VOLTANA_TRACE`` is set)."""
    global _out
    if _PREFIX is None:
        return
    if _out is None:
        _out = open(f"{_PREFIX}.{os.getpid()}", "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - kept open
    _out.write(json.dumps([name, key, time.monotonic()]) + "\n")


def hops(prefix: str | Path) -> dict[str, list[float]]:
    """Each hop's duration (ms) per request traced under ``prefix``, by the hop's starting event (``PATH``),
    aligned over the requests (nan where one was not traced). The events of all processes are read back; the
    client's are matched to the router's in order: the sends after the warm-up requests the router never saw,
    and each first token to the first one after the router relayed it (close relays may swap two requests)."""
    events: list[tuple[str, int | None, float]] = []
    for f in Path(prefix).parent.glob(Path(prefix).name + ".*"):
        events += [(e[0], e[1], e[2]) for e in map(json.loads, f.read_text(encoding="utf-8").splitlines())]
    events.sort(key=lambda e: e[2])
    by_room: dict[int, dict[str, float]] = defaultdict(dict)
    for name, key, t in events:
        if key is not None:
            by_room[key].setdefault(name, t)
    rooms = sorted((r for r in by_room.values() if "router_received" in r), key=lambda r: r["router_received"])
    sent = [t for name, _, t in events if name == "client_sent"]
    firsts = [t for name, _, t in events if name == "client_first_token"]
    if len(sent) >= len(rooms):  # else the client was not traced
        for r, t in zip(rooms, sent[len(sent) - len(rooms):], strict=True):
            r["client_sent"] = t
    for r in rooms:
        i = bisect.bisect_left(firsts, r.get("router_first_token", math.inf))
        if i < len(firsts):
            r["client_first_token"] = firsts[i]
    nan = math.nan
    return {a: [1e3 * (r[b] - r[a]) if a in r and b in r else nan for r in rooms]
            for (a, _), (b, _) in zip(PATH, PATH[1:], strict=False)}


def median(xs: list[float]) -> float:
    """The median of the traced values (nan: none)."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan
