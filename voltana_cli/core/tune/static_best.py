"""``static-best``: the strongest thing an operator could do by hand, found by search for the rate at hand.

One static clock for prefill and one for decode, chosen separately: the pair with the least energy whose
joint SLO attainment meets the rate's requirement. The least energy is not always at the lowest clock
that meets the SLO (static power is paid per second, and a slower prefill backs work up into decode), so
the search measures energy at every candidate rather than stopping at the lowest feasible clock.

The search is coordinate descent on a grid of clocks about 100 MHz apart: the prefill clock with decode at
the top, then the decode clock with that prefill clock and again with the prefill clock one step up, then
prefill again with the decode clock of the best pair so far. Along a
coordinate, clocks are visited from the top down and the walk stops two candidates after the
requirement first fails (attainment falls with the clock). Every pair is simulated on the same seeds as
the runs it is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from voltana_cli.core.tune.scenario import Scenario

#: Clocks below this share of the top clock are not candidates: no one serves at them, and their energy per
#: token rises again (the work takes longer than static power allows).
GRID_FLOOR = 0.35


def clock_grid(clocks: tuple[int, ...], spacing_mhz: int = 100) -> list[int]:
    """Candidate static clocks, descending from the top about ``spacing_mhz`` apart, down to ``GRID_FLOOR``."""
    top = clocks[-1]
    floor = GRID_FLOOR * top
    out = [top]
    for c in reversed(clocks):
        if c < floor:
            break
        if out[-1] - c >= spacing_mhz - 1e-9:
            out.append(c)
    return out


@dataclass
class PairResult:
    """The mean energy and joint attainment of one (prefill, decode) static pair over the seeds (colocated:
    one clock for both, on the colocated layout)."""

    prefill_mhz: int
    decode_mhz: int
    energy_j: float
    attainment: float
    colocated: bool = False

    @property
    def name(self) -> str:
        if self.colocated:
            return f"colocated:{self.prefill_mhz}"
        return f"static:{self.prefill_mhz}/{self.decode_mhz}"


@dataclass
class StaticBest:
    """The search's answer at one rate: the best pair (``None``: not even the top clocks meet the
    requirement) and every pair it simulated."""

    rate: float
    requirement: float
    best: PairResult | None
    tried: list[PairResult] = field(default_factory=list)


def evaluate_pair(scn: Scenario, rate: float, seeds: list[int], prefill: int, decode: int) -> PairResult:
    """Mean energy and joint attainment of ``static:prefill/decode`` at ``rate`` over ``seeds``."""
    return pair_of(prefill, decode, [scn.run(f"static:{prefill}/{decode}", rate, s) for s in seeds])


def means(runs: list[dict]) -> tuple[float, float]:
    """The mean total energy and joint attainment of runs (their summaries, one per seed)."""
    return (sum(r["energy_j"]["total"] for r in runs) / len(runs),
            sum(r["attainment"]["both"] for r in runs) / len(runs))


def pair_of(prefill: int, decode: int, runs: list[dict]) -> PairResult:
    """The ``PairResult`` of runs already made (their summaries, one per seed)."""
    return PairResult(prefill, decode, *means(runs))


def find_static_best(scn: Scenario, rate: float, seeds: list[int], requirement: float,
                     progress: Callable[[str], None] | None = None,
                     static_max: list[dict] | None = None) -> StaticBest:
    """Search the static pair with the least energy whose joint attainment is at least ``requirement``.

    Args:
        scn: the world.
        rate: the request rate.
        seeds: the seeds every pair is simulated on.
        requirement: the joint attainment (0-1) a pair must reach.
        progress: told of each pair simulated.
        static_max: static-max's runs at this rate on ``seeds``, when the caller has them: the top pair is
            static-max, so it is not simulated again.
    """
    grid = clock_grid(tuple(scn.model.clocks))
    seen: dict[tuple[int, int], PairResult] = {}
    if static_max is not None:
        seen[(grid[0], grid[0])] = pair_of(grid[0], grid[0], static_max)

    def at(p: int, d: int) -> PairResult:
        if (p, d) not in seen:
            if progress:
                progress(f"static:{p}/{d} at {rate:g} req/s")
            seen[(p, d)] = evaluate_pair(scn, rate, seeds, p, d)
        return seen[(p, d)]

    def walk(fixed: int, prefill_axis: bool) -> int:
        """The cheapest feasible clock along one axis with the other fixed (the top when none is)."""
        best, best_e, fails = grid[0], float("inf"), 0
        for c in grid:
            r = at(c, fixed) if prefill_axis else at(fixed, c)
            if r.attainment >= requirement:
                if r.energy_j < best_e:
                    best, best_e = c, r.energy_j
            else:
                fails += 1
                if fails >= 2:
                    break
        return best

    def cheapest() -> PairResult | None:
        feasible = [r for r in seen.values() if r.attainment >= requirement]
        return min(feasible, key=lambda r: r.energy_j) if feasible else None

    pre = walk(grid[0], True)
    walk(pre, False)
    # A prefill clock found with the decode at the top can sit at the requirement's edge, where every lower
    # decode clock tips it over and the decode walk stays at the top (H100 x Llama-3.1-8B, 120 req/s, seeds
    # 0-1: it chose 1035/1980 MHz, which saved 16 % on held-out seeds; with this walk it finds 1140/930, which
    # saved 44 % there): the decode axis is walked again one prefill step up, and the last prefill walk is at
    # the best pair's decode clock.
    up = grid.index(pre) - 1  # the grid descends
    if up >= 0:
        walk(grid[up], False)
    found = cheapest()
    walk(found.decode_mhz if found else grid[0], True)
    return StaticBest(rate, requirement, cheapest(), list(seen.values()))


def requirement_for(static_max_attainment: float, target: float) -> float:
    """A rate's requirement: ``min(target, static-max's) - 1 point`` (a rate no policy serves at the target
    still asks for everything static-max keeps)."""
    return min(target, static_max_attainment) - 0.01


def find_colocated_best(scn: Scenario, rate: float, seeds: list[int], requirement: float,
                        progress: Callable[[str], None] | None = None) -> StaticBest:
    """The colocated layout at its best static clock: the clock with the least energy whose joint attainment
    is at least ``requirement``, walked from the top down the grid as one axis of ``find_static_best``."""
    tried: list[PairResult] = []
    fails = 0
    for c in clock_grid(tuple(scn.model.clocks)):
        if progress:
            progress(f"colocated:{c} at {rate:g} req/s")
        runs = [scn.run(f"colocated:{c}", rate, s) for s in seeds]
        r = pair_of(c, c, runs)
        tried.append(PairResult(c, c, r.energy_j, r.attainment, colocated=True))
        if r.attainment < requirement:
            fails += 1
            if fails >= 2:
                break
    feasible = [r for r in tried if r.attainment >= requirement]
    best = min(feasible, key=lambda r: r.energy_j) if feasible else None
    return StaticBest(rate, requirement, best, tried)


#: The oracle's budget margins searched (shares of the SLO). The widest leaves a tenth of the SLO, which runs
#: most iterations at the top clocks; under overload even it can miss the requirement (A100 x Llama-3.1-8B at
#: 90-100 req/s), and the report's row then shows the miss.
ORACLE_MARGINS = tuple(round(0.05 * i, 2) for i in range(19))


@dataclass
class OracleResult:
    """The mean energy and joint attainment of ``oracle:<margin>`` over the seeds."""

    margin: float
    energy_j: float
    attainment: float

    @property
    def name(self) -> str:
        return f"oracle:{self.margin:g}"


@dataclass
class OracleBest:
    """The oracle's search at one rate: the least margin that meets the requirement (``None``: none does)."""

    rate: float
    requirement: float
    best: OracleResult | None
    tried: list[OracleResult] = field(default_factory=list)


def find_oracle(scn: Scenario, rate: float, seeds: list[int], requirement: float,
                progress: Callable[[str], None] | None = None) -> OracleBest:
    """The oracle with the least budget margin whose joint attainment is at least ``requirement``.

    Margin 0 first (the plain oracle, enough at light load); else a bisection on ``ORACLE_MARGINS``, whose
    attainment rises with the margin (a tighter budget only raises clocks): about five runs."""
    seen: dict[int, OracleResult] = {}

    def at(i: int) -> OracleResult:
        if i not in seen:
            m = ORACLE_MARGINS[i]
            if progress:
                progress(f"oracle:{m:g} at {rate:g} req/s")
            seen[i] = OracleResult(m, *means([scn.run(f"oracle:{m:g}", rate, s) for s in seeds]))
        return seen[i]

    lo, hi = 0, len(ORACLE_MARGINS) - 1
    if at(lo).attainment >= requirement:
        hi = lo
    elif at(hi).attainment >= requirement:
        while hi - lo > 1:  # invariant: lo fails, hi meets
            mid = (lo + hi) // 2
            if at(mid).attainment >= requirement:
                hi = mid
            else:
                lo = mid
    best = seen[hi] if seen[hi].attainment >= requirement else None
    return OracleBest(rate, requirement, best, [seen[i] for i in sorted(seen)])


def searched_fallback(scn: Scenario, name: str) -> str:
    """What a searched name runs as when nothing it tried meets the requirement: what keeps the most (the top
    clocks; the oracle with its widest margin). The row then shows the miss."""
    top = scn.model.clocks[-1]
    return {"static-best": "static-max", "colocated": f"colocated:{top}",
            "oracle": f"oracle:{ORACLE_MARGINS[-1]:g}"}[name]


def find_searched(scn: Scenario, name: str, rate: float, seeds: list[int], requirement: float,
                  progress: Callable[[str], None] | None = None,
                  static_max: list[dict] | None = None) -> StaticBest | OracleBest:
    """The search behind a searched policy name (``static-best``, bare ``colocated`` or ``oracle``) at ``rate``."""
    if name == "colocated":
        return find_colocated_best(scn, rate, seeds, requirement, progress)
    if name == "static-best":
        return find_static_best(scn, rate, seeds, requirement, progress, static_max)
    if name == "oracle":
        return find_oracle(scn, rate, seeds, requirement, progress)
    raise ValueError(f"{name!r} is not a searched policy")
