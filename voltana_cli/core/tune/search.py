"""The tune search: the feedback controller's and router's knobs, chosen by simulation with Optuna.

Objective: the mean over the rates of the run's energy relative to static-max's at that rate (so every
rate weighs the same), plus ``REGRET_WEIGHT`` times what it spends above the cheapest baseline that meets
the rate's requirement on the same seeds (static-best searched there, the paper's policy; both with prefill
routed as the world routes it): knobs that save
much at some rates and lose to a hand-made baseline at others pay for the loss, because a user who runs at
that rate would have done better with the baseline. Constraint, per rate: joint attainment >= the rate's
requirement (``static_best.requirement_for``); Optuna's constrained TPE keeps the search among
feasible knobs and the best trial is the feasible one with the least energy. A trial is scored from the
most loaded rate down and stops at the first rate that misses its requirement by more than 2 points (the
rest cannot rescue it): the trial is recorded as infeasible at the cost of one or two runs instead of all
of them. Training asks no more than the requirement, although the search ends at the edge of feasibility
on the training seeds and held-out traffic then misses by a few tenths of a point at the steepest rates:
asked half a point more, one of two A100 tunes kept a single feasible trial, at static-max's energy.

The last 40 % of the budget polishes: a coordinate search from the best trial (ranked by value plus a penalty
per point of shortfall: one that misses by a hair is walked back to feasibility), a few steps at a time (as
many as there are workers), moving as soon as a step improves: the prefill router, each clock floor and each phase's overload
floor one grid step down or up, the prefill tie tolerance, each phase's overload threshold (x 1.2 either way),
where its slope rounds to a level (0.25 either way), overload ramp, the prefill utilisation cap and each
headroom (0.1 either way), overload curve and overload confidence (0.5 either way; the rounding and the curve
only on a phase whose rule is a slope, ``SLOPE_ONLY``), the prefill SLO loop's quantile (0.02 either way, only
where it reads one, ``TAIL_ONLY``) and floor lift (0.5 either way), then the floors of the warm starts; until no step is
left untried or the budget is spent, after which TPE has what is left. The floors set where each phase's clock
can go at light load and are where most of the energy is; TPE, sampling thirty-one knobs jointly, rarely
lands the best floors and the best gains in the same trial (H100 x Llama-3.1-8B: its best trial kept floors of
1245/1035 MHz where static-best runs 825/720, and the same knobs with those floors spend 2-9 % less at 80-140
req/s).

Many workers share one study through Optuna's storage (``--storage``: ``sqlite:///file.db``, a
PostgreSQL/MySQL URL, or ``journal:PATH`` for a journal file on a shared disk): ``--jobs J`` starts J local
worker processes; ``voltana tune`` on other hosts with the same storage and study name joins the same
search. No queue of our own: Optuna hands out the trials.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.policy.feedback import FeedbackParams, TunedPolicy
from voltana_cli.core.tune.scenario import Scenario
from voltana_cli.core.tune.static_best import clock_grid, means

#: The routers the search chooses among: the registry's, minus random. Round-robin ignores load but is what
#: the static policies run with, so static-max's attainment (every requirement's anchor) is kept with it: a
#: point at the top clocks with it is feasible at every rate, which the others are not under overload (A100 x
#: Llama-3.1-8B at 100 req/s: the predictive router at the top clocks kept 3 points less than static-max).
ROUTERS = ("predictive", "tile-aware", "least-loaded", "round-robin")
#: The routers the search chooses among for prefill (``TunedPolicy.prefill_router``); ``search_space`` puts
#: the world's own first (what the references run with, and the untuned default). Prefill routing decides much of the TTFT tail:
#: A100 x Llama-3.1-8B at 70 / 75 req/s, the paper's policy kept 98.6 / 96.7 % of TTFTs routed at random,
#: 99.2 / 98.5 % round-robin, 100 / 99.7 % to the prefill instance with the fewest queued tokens.
PREFILL_ROUTERS = ("random", "round-robin", "least-loaded")
#: Storage URL schemes Optuna serves (SQLAlchemy's) and the journal file form.
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")
#: A trial stops at the first rate that misses its requirement by more than this.
STOP_MARGIN = 0.02
#: How many of the best feasible trials the search hands back for confirmation on other traffic.
CANDIDATES = 4
#: The share of the trial budget spent polishing the best trial (see the module docstring).
POLISH_SHARE = 0.4
#: The knobs the polish steps on the clock grid.
FLOOR_KNOBS = ("prefill_floor_mhz", "decode_floor_mhz", "prefill_overload_floor_mhz", "decode_overload_floor_mhz")
#: Knobs that shape an overload slope and do nothing to a step (``overload_ramp`` 0): the polish leaves them.
SLOPE_ONLY = ("overload_round", "overload_curve")
#: Search ranges of knobs the polish steps too (``suggest`` samples them; the polish stays inside them).
HEADROOM_RANGE = (-0.1, 0.5)
TIE_TOLERANCE_RANGE = (0.0, 0.1)
OVERLOAD_RAMP_RANGE = (0.0, 0.5)
OVERLOAD_CURVE_RANGE = (0.5, 3.0)
OVERLOAD_TAU_RANGE = (0.0, 30.0)
OVERLOAD_Z_RANGE = (0.0, 3.0)
OVERLOAD_ROUND_RANGE = (0.0, 0.9)
MAX_UTILIZATION_RANGE = (0.5, 1.0)
#: The prefill SLO loop's tail (``FeedbackParams.quantile``; 0: the mean) and floor lift. Prefill only: TTFT is
#: a per-request SLO whose tail the loop can read; a decode iteration's latency is not the per-request mean ITL
#: that the ITL SLO scores, and where tuned A100 x Llama-3.1-8B policies missed a requirement at 70-75 req/s it
#: was TTFT's (ITL attainment 100 %).
QUANTILE_RANGE = (0.0, 0.99)
LIFT_GAIN_RANGE = (0.0, 2.0)
#: Continuous knobs the polish steps: (knob, step, multiplicative); each is kept inside its search range.
POLISH_KNOBS = (("prefill_tie_tolerance", 0.03, False), ("prefill_overload_rps", 1.2, True),
                ("decode_overload_rps", 1.2, True), ("prefill_overload_round", 0.25, False),
                ("decode_overload_round", 0.25, False), ("prefill_overload_ramp", 0.1, False),
                ("decode_overload_ramp", 0.1, False), ("prefill_overload_curve", 0.5, False),
                ("decode_overload_curve", 0.5, False), ("prefill_max_utilization", 0.1, False),
                ("prefill_headroom", 0.1, False), ("decode_headroom", 0.1, False),
                ("prefill_overload_z", 0.5, False), ("decode_overload_z", 0.5, False),
                ("prefill_quantile", 0.02, False), ("prefill_lift_gain", 0.5, False))
#: Knobs that do nothing while the SLO loop reads the mean (``quantile`` 0): the polish leaves them there.
TAIL_ONLY = ("quantile",)


def import_optuna() -> Any:
    """Optuna, imported on first use (``voltana tune`` needs it; bench does not)."""
    try:
        import optuna
    except ImportError:
        raise UserError("voltana tune needs Optuna: pip install optuna (it is a dependency of voltana; the "
                        "install may be incomplete)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_for(url: str | None) -> Any:
    """An Optuna storage for ``url`` (``None``: in memory); an unknown scheme is one line naming the valid."""
    if url is None:
        return None
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in STORAGE_SCHEMES or ":" not in url:
        raise UserError(f"{url!r} is not a study storage: use sqlite:///FILE.db, postgresql://..., mysql://... or "
                        "journal:FILE", field="storage")
    optuna = import_optuna()
    if scheme == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.split(":", 1)[1]))
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001  (SQLAlchemy's many errors: a bad URL, a missing driver, no server)
        raise UserError(f"cannot open the study storage {url!r}: {exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0][:160]}", field="storage") from None


#: What a trial pays per joule above a rate's reference energy, in units of that joule (see the module
#: docstring). Why: A100 x Llama-3.1-8B, seed 0, six held-out seeds, the winner of the mean alone saved
#: 1.1-4.3 points more than static-best at 75-100 req/s and lost to it by 0.3 / 0.9 at 50 / 60, and to the
#: paper's policy by 2.0 at 70. What it did: nothing measurable yet; the same knobs won with it (A100 and
#: H100, seed 0), because on the training seeds the alternatives the search found lost to the paper's policy
#: at 70 as well (under this objective the previous winner scores 0.8292, this one 0.8289).
REGRET_WEIGHT = 5.0


@dataclass
class Requirement:
    """What a rate asks of every policy: joint attainment and static-max's energy (the normaliser).

    ``reference_energy_j``: the least energy among the baselines that meet ``attainment`` on the same seeds
    (``None``: none is known, and the objective has no regret term at this rate)."""

    rate: float
    attainment: float
    static_max_energy_j: float
    static_max_attainment: float
    reference_energy_j: float | None = None
    anchored: bool = False  # static-max keeps less than the target: ``attainment`` is its own, less a point

    def cost(self, energy_j: float) -> float:
        """A run's share of the objective at this rate: its energy relative to static-max's, plus the regret."""
        regret = max(0.0, energy_j - self.reference_energy_j) if self.reference_energy_j is not None else 0.0
        return (energy_j + REGRET_WEIGHT * regret) / self.static_max_energy_j


def suggest(trial: Any, clocks: tuple[int, ...], levels: tuple[int, ...],
            overload_range: dict[str, tuple[float, float]],
            prefill_routers: tuple[str, ...] = PREFILL_ROUTERS) -> TunedPolicy:
    """The knobs of one trial (the search space). ``overload_range``: per phase, the per-instance arrival
    rates the overload threshold is searched between (from the rates asked, not from any one setup);
    ``prefill_routers``: the prefill routers to choose among."""
    grid = sorted(clock_grid(clocks))
    base = TunedPolicy.default_for(clocks, levels)

    def phase(name: str) -> FeedbackParams:
        return FeedbackParams(
            headroom=trial.suggest_float(f"{name}_headroom", *HEADROOM_RANGE),
            kp=trial.suggest_float(f"{name}_kp", 0.0, 1.0),
            ki=trial.suggest_float(f"{name}_ki", 0.0, 0.3),
            floor_mhz=trial.suggest_categorical(f"{name}_floor_mhz", grid),
            step=base.decode.step,
            dwell_s=trial.suggest_float(f"{name}_dwell_s", 0.0, 0.2),
            backlog_gain=trial.suggest_float(f"{name}_backlog_gain", 0.0, 10.0) if name == "decode" else 0.0,
            max_utilization=trial.suggest_float(f"{name}_max_utilization", *MAX_UTILIZATION_RANGE) if name == "prefill" else 1.0,
            overload_rps=trial.suggest_float(f"{name}_overload_rps", *overload_range[name]),
            overload_tau_s=trial.suggest_float(f"{name}_overload_tau_s", *OVERLOAD_TAU_RANGE),
            # Decode prices by power, which falls with the clock anyway: a tolerance changes nothing there.
            tie_tolerance=trial.suggest_float(f"{name}_tie_tolerance", *TIE_TOLERANCE_RANGE)
            if name == "prefill" else 0.0,
            overload_ramp=trial.suggest_float(f"{name}_overload_ramp", *OVERLOAD_RAMP_RANGE),
            overload_floor_mhz=trial.suggest_categorical(f"{name}_overload_floor_mhz", grid),
            overload_curve=trial.suggest_float(f"{name}_overload_curve", *OVERLOAD_CURVE_RANGE),
            overload_z=trial.suggest_float(f"{name}_overload_z", *OVERLOAD_Z_RANGE),
            overload_round=trial.suggest_float(f"{name}_overload_round", *OVERLOAD_ROUND_RANGE),
            quantile=trial.suggest_float(f"{name}_quantile", *QUANTILE_RANGE) if name == "prefill" else 0.0,
            lift_gain=trial.suggest_float(f"{name}_lift_gain", *LIFT_GAIN_RANGE) if name == "prefill" else 0.0,
        )

    return TunedPolicy(prefill=phase("prefill"), decode=phase("decode"),
                       router=trial.suggest_categorical("router", list(ROUTERS)),
                       router_headroom=trial.suggest_float("router_headroom", 0.0, 0.4),
                       prefill_router=trial.suggest_categorical("prefill_router", list(prefill_routers)))


def default_params(clocks: tuple[int, ...], levels: tuple[int, ...], ranges: dict[str, tuple[float, float]],
                   prefill_routers: tuple[str, ...] = PREFILL_ROUTERS,
                   floors: tuple[int, int] | None = None) -> dict[str, Any]:
    """The untuned ``feedback`` knobs as trial parameters (floors moved onto the search's grid, the overload
    threshold at the top of its range: as good as off, prefill routed by the first of ``prefill_routers``, the
    run's own). ``floors``: (prefill, decode) floors instead of the lowest EcoFreq level (a warm start from
    static-best's clocks)."""
    base = TunedPolicy.default_for(clocks, levels)
    grid = clock_grid(clocks)
    want = floors or (base.prefill.floor_mhz, base.decode.floor_mhz)
    out: dict[str, Any] = {"router": base.router, "router_headroom": base.router_headroom}
    for (name, p), f in zip((("prefill", base.prefill), ("decode", base.decode)), want, strict=True):
        floor = min(grid, key=lambda c: abs(c - f))  # noqa: B023  (used at once, inside this iteration)
        out.update({f"{name}_headroom": p.headroom, f"{name}_kp": p.kp, f"{name}_ki": p.ki,
                    f"{name}_floor_mhz": floor, f"{name}_dwell_s": p.dwell_s,
                    f"{name}_overload_tau_s": p.overload_tau_s, f"{name}_overload_ramp": p.overload_ramp,
                    f"{name}_overload_curve": p.overload_curve, f"{name}_overload_z": p.overload_z,
                    f"{name}_overload_round": p.overload_round})
        out[f"{name}_overload_rps"] = ranges[name][1]
        out[f"{name}_overload_floor_mhz"] = max(grid)
    out["decode_backlog_gain"] = base.decode.backlog_gain
    out["prefill_max_utilization"] = base.prefill.max_utilization
    out["prefill_tie_tolerance"] = base.prefill.tie_tolerance
    out["prefill_quantile"] = base.prefill.quantile
    out["prefill_lift_gain"] = base.prefill.lift_gain
    out["prefill_router"] = prefill_routers[0]
    return out


def score(scn: Scenario, tuned: TunedPolicy, reqs: list[Requirement], seeds: list[int],
          paired: dict[float, list[dict[str, Any]]] | None = None) -> tuple[float, float]:
    """(mean relative energy with its regret, ``Requirement.cost``; worst shortfall of attainment) of
    ``tuned`` over the rates and seeds.

    Rates are scored from the most loaded down; the first that falls short by more than ``STOP_MARGIN``
    ends the scoring (the trial is infeasible whatever the rest would give).

    ``paired``: static-max's runs on the same ``seeds`` at each rate (the confirmation's). With them, at a rate
    whose requirement is ``anchored`` on static-max's own attainment, meeting it is a paired comparison with
    static-max on the same traffic, whose error is the spread of the per-seed differences, and a shortfall
    counts only beyond one standard error of their mean: under overload a 60 s run's attainment is a lottery
    that four seeds cannot settle to a point. A100 x Llama-3.1-8B at 100 req/s, seeds 0, 1, 500, 501:
    static-max kept 25.9 / 49.5 / 6.7 / 30.1 %, and each of the four candidates of one search (the same clocks
    there, the same routers) missed the pooled requirement by 1.8-2.7 points; two of them kept 14.6 /
    59.1-59.4 / 4.9-5.8 / 18.5-21.8 %. The one kept for missing least spent 0.4 % more at 50 req/s on six
    held-out seeds than the one this rule keeps (57,237 J against 57,009) and lost to static-best there (57,155
    J); on those seeds both met the 100 req/s requirement, with 2.8 and 3.3 points to spare. Where static-max
    keeps the target, the requirement is the target less a point, a fixed line, and a shortfall counts in full.
    """
    rel: list[float] = []
    worst = -1.0
    for req in sorted(reqs, key=lambda r: -r.rate):
        runs = [scn.run("voltana-tuned", req.rate, s, tuned) for s in seeds]
        energy, att = means(runs)
        rel.append(req.cost(energy))
        shortfall = req.attainment - att
        if paired is not None and req.anchored and len(seeds) > 1:
            diffs = [r["attainment"]["both"] - b["attainment"]["both"]
                     for r, b in zip(runs, paired[req.rate], strict=True)]
            shortfall -= statistics.stdev(diffs) / math.sqrt(len(diffs))
        worst = max(worst, shortfall)
        if worst > STOP_MARGIN:
            return 1.0 + worst, worst
    return sum(rel) / len(rel), worst


def score_candidates(scn: Scenario, tuned: list[TunedPolicy], reqs: list[Requirement], seeds: list[int],
                     paired: dict[float, list[dict[str, Any]]] | None = None, jobs: int = 1,
                     progress: Callable[[str], None] | None = None) -> list[tuple[float, float]]:
    """``score`` of each of ``tuned``, shared among ``jobs`` spawned workers when more than one (as the
    search's trials are, ``_run_workers``)."""
    if jobs <= 1:
        out = []
        for t in tuned:
            if progress:
                progress("confirming a candidate on more traffic")
            out.append(score(scn, t, reqs, seeds, paired))
        return out
    if progress:
        progress(f"confirming {len(tuned)} candidates on more traffic")
    world = {"scn": scn, "reqs": reqs, "seeds": seeds, "paired": paired}
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(tuned)), initializer=_init_worker,
                                                    initargs=(world,)) as pool:
        return list(pool.map(_score_worker, tuned))


@dataclass
class StudyResult:
    """The search's outcome: the best feasible knobs (``None``: no trial was feasible) and its figures.

    ``candidates``: the best feasible trials' parameters and values, best first (``CANDIDATES`` of them), for a
    confirmation on other traffic before one is chosen (``run.confirm``)."""

    tuned: TunedPolicy | None
    value: float | None
    trials: int
    feasible: int
    params: dict[str, Any]
    candidates: list[tuple[dict[str, Any], float]] = field(default_factory=list)


def overload_range(scn: Scenario, rates: list[float]) -> dict[str, tuple[float, float]]:
    """Per phase, the per-instance arrival rates between the lowest asked rate's and 1.25 x the highest's."""
    out = {}
    for phase, n in (("prefill", scn.cluster.n_prefill), ("decode", scn.cluster.n_decode)):
        out[phase] = (min(rates) / n * 0.8, max(rates) / n * 1.25)
    return out


def search_space(scn: Scenario, rates: list[float]) -> tuple[tuple[int, ...], tuple[int, ...],
                                                               dict[str, tuple[float, float]], tuple[str, ...]]:
    """What ``suggest`` and ``default_params`` take for this world and these rates: the supported clocks, the
    GPU's EcoFreq levels, each phase's overload-threshold range, and the prefill routers (the world's first)."""
    routers = (scn.prefill_router, *(r for r in PREFILL_ROUTERS if r != scn.prefill_router))
    return tuple(scn.model.clocks), tuple(scn.model.gpu.ecofreq_levels_mhz), overload_range(scn, rates), routers


def _objective(scn: Scenario, reqs: list[Requirement], seeds: list[int]) -> Callable[[Any], float]:
    space = search_space(scn, [r.rate for r in reqs])

    def objective(trial: Any) -> float:
        tuned = suggest(trial, *space)
        value, shortfall = score(scn, tuned, reqs, seeds)
        trial.set_constraint("shortfall", shortfall)  # <= 0: every rate met its requirement
        return value

    return objective


def _sampler(optuna: Any, seed: int, startup: int) -> Any:
    # Constrained TPE: the sampler reads each trial's constraints (``Trial.set_constraint``).
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


# A worker process's world, set by ``_init_worker`` when the process starts.
_WORKER: dict[str, Any] = {}


def _init_worker(world: dict[str, Any]) -> None:
    _WORKER.update(world)


def _worker(args: tuple[int, int]) -> None:
    n_trials, seed = args
    w = _WORKER
    optuna = import_optuna()
    study = optuna.load_study(study_name=w["name"], storage=storage_for(w["storage"]),
                              sampler=_sampler(optuna, seed, w["startup"]))
    study.optimize(_objective(w["scn"], w["reqs"], w["seeds"]), n_trials=n_trials)


def run_study(scn: Scenario, reqs: list[Requirement], seeds: list[int], trials: int, seed: int,
              storage: str | None = None, study_name: str | None = None, jobs: int = 1,
              on_trial: Callable[[int, float | None], None] | None = None,
              warm: list[dict[str, Any]] | None = None) -> StudyResult:
    """Search the knobs over ``trials`` trials (shared among ``jobs`` local workers).

    Args:
        scn: the world.
        reqs: each rate's requirement.
        seeds: the seeds every trial is scored on.
        trials: the trial budget (this call's; other hosts on the same study add theirs).
        seed: the sampler's seed (``jobs == 1`` makes the search reproducible).
        storage: the study storage URL (``None``: in memory, or a temporary SQLite file for ``jobs > 1``).
        study_name: the study's name in the storage (resumes it when it exists).
        jobs: local worker processes.
        on_trial: told after each trial of this process: (trials done, best feasible value so far).
        warm: more starting points a new study tries first (after the untuned defaults), as trial parameters.
    """
    optuna = import_optuna()
    startup = max(4, min(10, trials // 3))
    name = study_name or "voltana-tune"
    tmp = None
    if jobs > 1 and storage is None:  # the workers need a storage they all reach
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix="voltana-study-", suffix=".db")
        os.close(fd)
        storage = f"sqlite:///{tmp}"
    store = storage_for(storage)
    try:
        study = optuna.create_study(study_name=name, storage=store, direction="minimize", load_if_exists=True,
                                    sampler=_sampler(optuna, seed, startup))

        space = search_space(scn, [r.rate for r in reqs])
        if not study.trials:  # a new study starts from the untuned defaults: the search knows a sane point
            study.enqueue_trial(default_params(*space))
            for params in warm or []:
                study.enqueue_trial(params)

        def callback(study: Any, trial: Any) -> None:
            if on_trial:
                on_trial(len(study.trials), _best(study)[1])

        polish = round(trials * POLISH_SHARE) if trials >= 8 else 0
        anchors = [{k: p[k] for k in FLOOR_KNOBS if k in p} for p in warm or []]
        if jobs <= 1:
            study.optimize(_objective(scn, reqs, seeds), n_trials=trials - polish, callbacks=[callback])

            def score_all(tuned: list[TunedPolicy]) -> list[tuple[float, float]]:
                return [score(scn, t, reqs, seeds) for t in tuned]

            left = _polish(study, space, polish, anchors, score_all, on_trial)
            if left:  # the polish reached a local best early: the search goes on with what is left
                study.optimize(_objective(scn, reqs, seeds), n_trials=left, callbacks=[callback])
        else:
            _run_workers(scn, reqs, seeds, trials, seed, storage, name, startup, jobs, study, on_trial, polish,
                         anchors, space)
        best, value = _best(study)
        ok = sorted((t for t in study.get_trials(deepcopy=False) if _feasible(t)), key=lambda t: t.value)
        distinct: dict[tuple[tuple[str, Any], ...], tuple[dict[str, Any], float]] = {}
        for t in ok:
            distinct.setdefault(_key(t.params), (dict(t.params), float(t.value)))
        return StudyResult(best and _tuned_of(best, scn, reqs), value, len(study.trials), len(ok),
                           dict(best.params) if best else {}, list(distinct.values())[:CANDIDATES])
    finally:
        if tmp:
            os.unlink(tmp)


def _run_workers(scn: Scenario, reqs: list[Requirement], seeds: list[int], trials: int, seed: int, storage: str | None,
                 name: str, startup: int, jobs: int, study: Any,
                 on_trial: Callable[[int, float | None], None] | None, polish: int,
                 anchors: list[dict[str, Any]], space: tuple[Any, ...]) -> None:
    """``jobs`` worker processes share ``trials`` through the storage (each opens its own connection to it);
    this process reports progress. The last ``polish`` trials polish (``_polish``), each round's steps
    scored in parallel.

    Workers are spawned, not forked: this process runs threads (the progress display, the storage's
    connection pool), and a fork taken while one of them holds a lock leaves the child waiting on it for
    ever. The world is pickled to each worker once, when it starts."""
    world = {"scn": scn, "reqs": reqs, "seeds": seeds, "name": name, "storage": storage, "startup": startup}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(world,)) as pool:

        def score_all(tuned: list[TunedPolicy]) -> list[tuple[float, float]]:
            return list(pool.map(_score_worker, tuned))

        def spread(n: int, first_seed: int) -> None:  # n trials of TPE shared among the workers
            shares = [n // jobs + (1 if i < n % jobs else 0) for i in range(jobs)]
            res = pool.map_async(_worker, [(k, first_seed + i) for i, k in enumerate(shares) if k > 0])
            while not res.ready():
                res.wait(1.0)
                if on_trial:
                    on_trial(len(study.get_trials(deepcopy=False)), _best(study)[1])
            res.get()

        spread(trials - polish - _run_queued(study, space, trials - polish, score_all, on_trial), seed)
        left = _polish(study, space, polish, anchors, score_all, on_trial, batch=jobs)
        if left:  # the polish reached a local best early: the search goes on with what is left
            spread(left, seed + jobs)


def _score_worker(tuned: TunedPolicy) -> tuple[float, float]:
    w = _WORKER
    return score(w["scn"], tuned, w["reqs"], w["seeds"], w.get("paired"))


def _run_queued(study: Any, space: tuple[Any, ...], limit: int,
                score_all: Callable[[list[TunedPolicy]], list[tuple[float, float]]],
                on_trial: Callable[[int, float | None], None] | None) -> int:
    """Run up to ``limit`` of the study's queued trials (starting points, polish steps) with this process
    asking and telling and ``score_all`` scoring them (in parallel where it has workers); return how many ran.

    Workers must not pop queued trials themselves: taking a queued trial is a read then a write, which
    SQLite does not lock, so two workers can take the same one (and then fail to tell it twice)."""
    optuna = import_optuna()
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    n = min(len(waiting), limit)
    if n <= 0:
        return 0
    asked = [study.ask() for _ in range(n)]
    tuned = [suggest(t, *space) for t in asked]
    for trial, (value, shortfall) in zip(asked, score_all(tuned), strict=True):
        trial.set_constraint("shortfall", shortfall)
        study.tell(trial, value)
        if on_trial:
            on_trial(len(study.get_trials(deepcopy=False)), _best(study)[1])
    return n


def _key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


def polish_steps(params: dict[str, Any], grid: list[int], anchors: list[dict[str, Any]],
                 bounds: dict[str, tuple[float, float]] | None = None,
                 prefill_routers: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The polish's candidate steps from ``params``, in the order they are tried: each other of
    ``prefill_routers``; each clock floor one grid step down, then up; each of ``POLISH_KNOBS`` down, then up,
    inside ``bounds`` (its search range); then the anchors' floors (the warm starts'). Every other knob is
    kept. ``grid`` ascending.

    The prefill router first: it moves the TTFT tail more than any one knob (``PREFILL_ROUTERS``), and the
    floors' steps after it spend the slack it leaves."""
    out = [{**params, "prefill_router": r} for r in prefill_routers
           if "prefill_router" in params and r != params["prefill_router"]]
    for step in (-1, 1):
        for knob in FLOOR_KNOBS:
            if params.get(knob) in grid:
                j = grid.index(params[knob]) + step
                if 0 <= j < len(grid):
                    out.append({**params, knob: grid[j]})
    for knob, size, times in POLISH_KNOBS:
        if knob not in params or bounds is None or knob not in bounds:
            continue
        phase, name = knob.split("_", 1)
        if name in SLOPE_ONLY and not params.get(f"{phase}_overload_ramp", 0.0) > 0:
            continue  # a step has no slope to bend or round: the trial would repeat its start
        if name in TAIL_ONLY and not params.get(f"{phase}_quantile", 0.0) > 0:
            continue  # from the mean, a step would read the lowest quantiles, the opposite of a tail
        lo, hi = bounds[knob]
        v = float(params[knob])
        for moved in ((v / size, v * size) if times else (v - size, v + size)):
            moved = min(max(moved, lo), hi)
            if abs(moved - v) > 1e-12:
                out.append({**params, knob: moved})
    out += [{**params, **a} for a in anchors if a]
    return out


def polish_bounds(space: tuple[Any, ...]) -> dict[str, tuple[float, float]]:
    """The search ranges of ``POLISH_KNOBS`` for ``space`` (what ``suggest`` samples them from)."""
    out = {}
    for knob, _, _ in POLISH_KNOBS:
        phase, name = knob.split("_", 1)
        out[knob] = space[2][phase] if name == "overload_rps" else _RANGES[name]
    return out


#: The fixed search ranges of the polished knobs, by knob name without its phase.
_RANGES = {"tie_tolerance": TIE_TOLERANCE_RANGE, "headroom": HEADROOM_RANGE, "overload_ramp": OVERLOAD_RAMP_RANGE,
           "overload_curve": OVERLOAD_CURVE_RANGE, "max_utilization": MAX_UTILIZATION_RANGE,
           "overload_z": OVERLOAD_Z_RANGE, "overload_round": OVERLOAD_ROUND_RANGE, "quantile": QUANTILE_RANGE,
           "lift_gain": LIFT_GAIN_RANGE}


def _polish(study: Any, space: tuple[Any, ...], budget: int, anchors: list[dict[str, Any]],
            score_all: Callable[[list[TunedPolicy]], list[tuple[float, float]]],
            on_trial: Callable[[int, float | None], None] | None, batch: int = 1) -> int:
    """A coordinate search from the best trial (``_polish_order``): its untried steps ``batch`` at a time,
    moving as soon as one improves, until no step is left untried or ``budget`` trials are spent (see the module
    docstring); returns the budget left. The steps are ordinary trials of the study: they are stored, and a
    resumed or shared study sees them."""
    grid = sorted(clock_grid(space[0]))
    bounds = polish_bounds(space)
    while budget > 0:
        trials = study.get_trials(deepcopy=False)
        tried = {_key(t.params) for t in trials}
        steps: list[dict[str, Any]] = []
        for start in _polish_order(trials):  # the first with a step not yet tried
            for p in polish_steps(dict(start.params), grid, anchors, bounds, space[3]):
                if _key(p) not in tried:
                    tried.add(_key(p))
                    steps.append(p)
            if steps:
                break
        if not steps:
            return budget
        n = min(len(steps), budget, max(1, batch))
        for p in steps[:n]:
            study.enqueue_trial(p)
        budget -= _run_queued(study, space, n, score_all, on_trial)
    return 0


def _feasible(t: Any) -> bool:
    c = t.constraints
    return t.value is not None and bool(c) and max(dict(c).values()) <= 0


#: The polish ranks trials by value plus this much per unit of shortfall (0.1 per point of attainment).
SHORTFALL_PENALTY = 10.0


def _polish_order(trials: list[Any]) -> list[Any]:
    """Scored trials in the order the polish starts from them: by value plus ``SHORTFALL_PENALTY`` times the
    shortfall. A trial that misses a requirement by a hair but spends far less than the best feasible one is
    worth walking back to feasibility (the paper's rule with a switch often is: A100 x Llama-3.1-8B, seed 1,
    0.78 of static-max's energy, short by 0.007 points, against 1.0 for the only feasible start, static-best
    of the heaviest rate, which is static-max there)."""
    scored = [t for t in trials if t.value is not None and t.constraints]
    return sorted(scored, key=lambda t: t.value + SHORTFALL_PENALTY * max(0.0, max(dict(t.constraints).values())))


def _best(study: Any) -> tuple[Any, float | None]:
    ok = [t for t in study.get_trials(deepcopy=False) if _feasible(t)]
    if not ok:
        return None, None
    best = min(ok, key=lambda t: t.value)
    return best, float(best.value)


def _tuned_of(trial: Any, scn: Scenario, reqs: list[Requirement]) -> TunedPolicy:
    """The knobs of a finished trial, rebuilt from its parameters."""
    return tuned_from_params(dict(trial.params), scn, [r.rate for r in reqs])


def tuned_from_params(params: dict[str, Any], scn: Scenario, rates: list[float]) -> TunedPolicy:
    """The knobs a trial's parameters stand for, in the search space of ``scn`` at ``rates``. A knob the
    parameters lack (a trial of a study that an older voltana began, resumed through ``--storage``) takes its
    untuned value, which is what that trial ran with."""
    space = search_space(scn, rates)
    return suggest(import_optuna().trial.FixedTrial({**default_params(*space), **params}), *space)
