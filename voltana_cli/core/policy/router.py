"""Routers: pure choices of the instance that serves a request.

Prefill routers pick the prefill instance when a request arrives; decode routers pick the decode instance
when its prefill completes. They see ``InstanceView``s and return an index into them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(slots=True)
class InstanceView:
    """What a router may know about an instance."""

    index: int
    num_requests: int  # running + queued
    queued_tokens: int  # prefill: tokens waiting; decode: KV tokens of running + queued requests
    clock_mhz: int
    kv_tokens: int = 0  # decode: KV of the running requests plus the prompts of those waiting or in flight
    gated: int = 0  # decode: requests its last pre-allocation pass held back (its KV cache is full)


class Router(Protocol):
    """Chooses the instance of each request. The views describe the instances at the time of the call; a
    world may refresh the same view objects for the next call, so a router keeps none of them."""

    def choose(self, input_tokens: int, views: Sequence[InstanceView]) -> int:
        """The ``index`` of the chosen view for a request of ``input_tokens`` prompt tokens."""
        ...


class RoundRobinRouter:
    """Each instance in turn."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, input_tokens: int, views: Sequence[InstanceView]) -> int:
        i = self._next % len(views)
        self._next = i + 1
        return views[i].index


class RandomRouter:
    """A uniformly random instance, from a seeded integer generator (splitmix64) kept in the router, so the
    choice is reproducible and the policy core needs no random module. The reference LB of VoltanaLLM picks
    the prefill instance this way for every policy (``random.choice`` in its ``select_pair``)."""

    def __init__(self, seed: int = 0):
        self._state = seed & _MASK64
        # The generator's outputs in order, drawn a block at a time (``_splitmix64_block``).
        self._draw = itertools.chain.from_iterable(self._blocks()).__next__

    def _blocks(self) -> Iterator[list[int]]:
        while True:
            block, self._state = _splitmix64_block(self._state)
            yield block

    def choose(self, input_tokens: int, views: Sequence[InstanceView]) -> int:
        draw = self._draw  # a callable attribute: through a local, the call is a plain call
        return views[draw() % len(views)].index


_MASK64 = (1 << 64) - 1
_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's constants
_BLOCK = 4096  # draws per block
_NATIVE_ORDER: Literal["little", "big"] = "little" if memoryview(b"\x01\x00").cast("H")[0] == 1 else "big"


@functools.cache
def _lanes() -> tuple[int, int, int]:
    """The lane constants of ``_splitmix64_block``, one 128-bit lane per draw: 1 in every lane; (k + 1) * GAMMA
    in lane k; the low 64 bits set in every lane (built on first use)."""
    ones = int.from_bytes((b"\x01" + bytes(15)) * _BLOCK, "little")
    counts = int.from_bytes(b"".join((k + 1).to_bytes(16, "little") for k in range(_BLOCK)), "little")
    low64 = int.from_bytes((b"\xff" * 8 + bytes(8)) * _BLOCK, "little")
    return ones, _GAMMA * counts, low64


def _splitmix64_block(state: int) -> tuple[list[int], int]:
    """The next ``_BLOCK`` outputs of splitmix64 from ``state``, and its state after them.

    The same numbers as the step-by-step generator::

        state = (state + GAMMA) % 2**64
        z = ((state ^ (state >> 30)) * MIX1) % 2**64
        z = ((z ^ (z >> 27)) * MIX2) % 2**64
        output = z ^ (z >> 31)

    computed for the whole block at once, for speed: lane k (bits 128k to 128k + 127) of one Python integer
    holds draw k, and each step above is one operation on that integer (a 64-bit value times a 64-bit
    constant fits its 128-bit lane; the mask drops what a shift brings in from the next lane). A draw costs a
    few machine words of big-integer work instead of a dozen interpreted big-integer operations.
    """
    ones, gammas, low64 = _lanes()
    z = (state * ones + gammas) & low64  # lane k: state + (k + 1) * GAMMA, mod 2**64
    z = ((z ^ (z >> 30)) & low64) * _MIX1 & low64
    z = ((z ^ (z >> 27)) & low64) * _MIX2 & low64
    z = (z ^ (z >> 31)) & low64
    # Each lane's low 64 bits as a machine word: every other word of the integer's bytes, in native order.
    words = memoryview(z.to_bytes(16 * _BLOCK, _NATIVE_ORDER)).cast("Q")
    block = words[::2].tolist() if _NATIVE_ORDER == "little" else words[::-2].tolist()
    return block, (state + _BLOCK * _GAMMA) & _MASK64


class LeastLoadedRouter:
    """The instance with the fewest queued tokens (ties: fewest requests, then lowest index)."""

    def choose(self, input_tokens: int, views: Sequence[InstanceView]) -> int:
        best = views[0]
        for v in views:
            if (v.queued_tokens, v.num_requests, v.index) < (best.queued_tokens, best.num_requests, best.index):
                best = v
        return best.index


class TileAwareRouter:
    """VoltanaLLM's EcoRoute ("tile-aware"): keep decode instances below batch-size boundaries.

    ``tile`` is the batch-size boundary: the engine's GEMM tile (128 on the paper's setup) from spec data,
    or a step EcoPred found in a profile.

    While every instance has fewer than ``tile`` requests, pick the one with the lowest
    (clock, request count). Otherwise order instances by (tiles in use = ceil(n / tile), -n) and take the
    first whose count is 0 or not a multiple of ``tile``, so that no instance opens a new tile while
    another can absorb the request; if all sit exactly on a boundary, the least-loaded one opens a tile.
    """

    def __init__(self, tile: int):
        if tile < 1:
            raise ValueError("tile must be >= 1")
        self.tile = tile

    def choose(self, input_tokens: int, views: Sequence[InstanceView]) -> int:
        # The orders below are tuple orders written out field by field (this runs once per request; building
        # the tuples cost more than the comparisons).
        tile = self.tile
        for v in views:
            if v.num_requests >= tile:
                break
        else:  # every instance is below the tile: the lowest (clock, count, index)
            low = views[0]
            lc, ln = low.clock_mhz, low.num_requests
            for v in views:
                c, n = v.clock_mhz, v.num_requests
                if c < lc or (c == lc and (n < ln or (n == ln and v.index < low.index))):
                    low, lc, ln = v, c, n
            return low.index
        # The first in (tiles in use, -count, index) order that can absorb the request without opening a tile.
        best = None
        bt = bn = 0
        for v in views:
            n = v.num_requests
            if n % tile or n == 0:
                t = -(-n // tile)
                if best is None or t < bt or (t == bt and (n > bn or (n == bn and v.index < best.index))):
                    best, bt, bn = v, t, n
        if best is not None:
            return best.index
        least = views[0]  # all sit on a boundary: the least loaded opens a tile
        for v in views:
            if (v.num_requests, v.index) < (least.num_requests, least.index):
                least = v
        return least.index
