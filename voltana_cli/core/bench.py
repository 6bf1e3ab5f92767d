"""``voltana bench`` as a library call: build the workload, simulate each (rate, policy), summarise.

``run_bench(BenchConfig(...))`` returns the report dict that ``--json`` writes (schema in the README),
plus, through ``run_bench_full``, the raw per-run results for CSV and plots.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from voltana_cli import __version__
from voltana_cli.core.errors import UserError, validation_problem
from voltana_cli.core.metrics import ITL_RULE, RequestLog, request_frame, summarize
from voltana_cli.core.models import (
    InstanceModel,
    PerfModel,
    ProfileModel,
    defaults,
    engine_spec,
    gpu_spec,
    model_spec,
)
from voltana_cli.core.models.ecopred import EcoPred
from voltana_cli.core.models.profile import load_profile
from voltana_cli.core.policy import DEFAULT_PREFILL_ROUTER, PAPER_RUN_MARGINS, REGISTRY, EcoFreqParams
from voltana_cli.core.report import Timeline
from voltana_cli.core.sim import ClusterConfig
from voltana_cli.core.tune import Scenario, find_searched, load_predictor, load_tuned, requirement_for, searched_fallback
from voltana_cli.core.workloads import DatasetRequest, LengthTrace, Workload, load_lengths

DEFAULT_POLICIES = ["static-max", "static-min", "voltana"]
#: Size limits checked before any work: a sweep's rates, and the requests one run simulates (each costs about
#: a kilobyte of Python state; 2 million is ~2 GB and minutes of simulation).
MAX_SWEEP_RATES = 1000
MIN_BURSTINESS = 0.01
MAX_REQUESTS_PER_RUN = 2_000_000


class BenchConfig(BaseModel):
    """Everything a bench run depends on; echoed in the report."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "sharegpt"
    dataset_path: Path | None = None
    tokenizer: str = "llama3"
    request_rates: list[float] = Field(default_factory=lambda: [60.0])
    duration_s: float | None = 120.0
    num_prompts: int | None = None
    arrival: str = "auto"
    burstiness: float = 1.0
    seed: int = 0
    gpu: str = Field(default_factory=lambda: defaults().gpu)
    model: str = Field(default_factory=lambda: defaults().model)
    tp: int | None = None
    engine: str = "sglang"  # the serving engine's spec (data/engines): how it batches, its flags
    n_prefill: int = 2
    n_decode: int = 2
    policies: list[str] = Field(default_factory=lambda: list(DEFAULT_POLICIES))
    slo_ttft_ms: float | None = None  # None: the model's default (spec data, with its source)
    slo_itl_ms: float | None = None
    ecofreq_margin: float | None = None  # None: the targets of the paper's run (policy.registry.PAPER_RUN_MARGINS)
    ecofreq_clocks_mhz: list[int] | None = None
    prediction_error: float = 0.05
    noise: float = 0.02
    chunked_prefill_tokens: int | None = None
    tile: int | None = None
    # The router of prefill instances; None: the one a ``tuned`` config was tuned with, else
    # ``DEFAULT_PREFILL_ROUTER`` (random, as the paper's reference load balancer picks them).
    prefill_router: str | None = None
    # The random dataset's lengths, as SGLang's bench_serving draws them: uniform from ratio x len to len.
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.5
    profile: str | None = None  # a profile directory (or shipped <gpu>/<model>) as the simulated GPU's truth
    predictor: Path | None = None  # a tuned-config YAML whose EcoPred the controller uses
    tuned: Path | None = None  # a tuned config from `voltana tune`: adds voltana-tuned with its knobs

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, v: str, info: ValidationInfo) -> str:
        # Only ShareGPT is text; the other datasets already are token counts, so a tokenizer would go unused.
        if v != "llama3" and info.data.get("dataset") != "sharegpt":
            raise ValueError(f"{v} counts ShareGPT's text only; the {info.data.get('dataset')} dataset is token "
                             "counts already: leave it out")
        return v

    @field_validator("random_input_len", "random_output_len", "random_range_ratio")
    @classmethod
    def _random_only(cls, v: float, info: ValidationInfo) -> float:
        if info.field_name == "random_range_ratio":
            if not 0 <= v <= 1:
                raise ValueError(f"{v} must be a fraction from 0 to 1")
        elif v < 1:
            raise ValueError(f"{v} must be a number of tokens >= 1")
        # Only the random dataset draws lengths; any other has its own, so a length given for it would go unused.
        if v != cls.model_fields[str(info.field_name)].default and info.data.get("dataset") != "random":
            raise ValueError(f"{v} sets the random dataset's lengths; the {info.data.get('dataset')} dataset has its "
                             "own: leave it out, or use --dataset random")
        return v

    @field_validator("request_rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one request rate")
        for r in v:
            if not (r > 0 and math.isfinite(r)):
                raise ValueError(f"request rate {r} must be a number > 0")
        return v

    @field_validator("slo_ttft_ms", "slo_itl_ms")
    @classmethod
    def _slo(cls, v: float | None) -> float | None:
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ValueError(f"SLO {v} must be a number > 0 ms")
        return v

    @field_validator("duration_s")
    @classmethod
    def _duration(cls, v: float | None) -> float | None:
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{v} must be a number of seconds > 0")
        return v

    @field_validator("num_prompts")
    @classmethod
    def _prompts(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError(f"{v} must be > 0")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"{v} must be a whole number >= 0")
        return v

    @field_validator("tp")
    @classmethod
    def _tp(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"{v} must be >= 1 (GPUs per instance); leave it out for the model's default")
        return v

    @field_validator("noise")
    @classmethod
    def _noise(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"{v} must be a lognormal sigma in [0, 1) (0.02 = 2 % jitter)")
        return v

    @field_validator("burstiness")
    @classmethod
    def _burstiness(cls, b: float, info: ValidationInfo) -> float:
        if not (b > 0 and math.isfinite(b)):
            raise ValueError(f"{b} must be a number > 0 (1 = Poisson, < 1 burstier)")
        if b < MIN_BURSTINESS:
            raise ValueError(f"{b} is below {MIN_BURSTINESS}: a gamma process that bursty puts almost every request "
                             "at one instant; use 0.1 for very bursty traffic")
        if b != 1.0 and info.data.get("arrival") != "gamma":
            raise ValueError(f"{b} shapes gamma arrivals only: choose gamma arrivals, or leave it at 1")
        return b

    @field_validator("prediction_error")
    @classmethod
    def _error(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError(f"{v} must be a fraction in [0, 1) (0.05 = ±5 %)")
        return v


def parse_rates(text: str) -> list[float]:
    """``"60"`` or ``"START:STOP:STEP"`` (inclusive of STOP) into a list of rates."""
    try:
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not (0 < start <= stop and step > 0 and math.isfinite(stop) and math.isfinite(step)):
                raise UserError(f"{text}: a sweep is START:STOP:STEP with 0 < START <= STOP (finite) and STEP > 0",
                                field="request_rates")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            if n > MAX_SWEEP_RATES:
                raise UserError(f"{text} is a sweep of {n:,} rates; the limit is {MAX_SWEEP_RATES:,} (each rate runs "
                                "every policy): use a larger step", field="request_rates")
            return [round(start + i * step, 9) for i in range(n)]
        rate = float(text)
    except ValueError:
        raise UserError(f"{text!r} is not a number or START:STOP:STEP (e.g. 60 or 50:100:10)",
                        field="request_rates") from None
    if not (rate > 0 and math.isfinite(rate)):
        raise UserError(f"{text} must be a number > 0 (requests per second)", field="request_rates")
    return [rate]


@dataclass
class RunRecord:
    rate: float
    policy: str
    result: RequestLog
    summary: dict


@dataclass
class BenchOutput:
    report: dict
    runs: list[RunRecord]
    notes: list[str] = field(default_factory=list)  # what the user should know of the run (also in the report)


def make_config(**fields: object) -> BenchConfig:
    """Build a validated ``BenchConfig``; a bad field becomes a ``UserError`` naming it."""
    try:
        return BenchConfig.model_validate(fields)
    except ValidationError as exc:
        loc, msg = validation_problem(exc)
        raise UserError(msg.removeprefix("Value error, "), field=loc.split(".")[0] or None) from None


@dataclass
class PreparedBench:
    """A validated bench: specs, model, cluster and dataset loaded, every policy buildable."""

    cfg: BenchConfig
    model: PerfModel
    truth: InstanceModel
    predictor: EcoPred | None
    cluster: ClusterConfig
    ecofreq: EcoFreqParams
    lengths: LengthTrace
    arrival: str
    scenario: Scenario
    notes: list[str] = field(default_factory=list)  # what the user should know of the set-up (also in the report)


def prepare_bench(cfg: BenchConfig) -> PreparedBench:
    """Validate ``cfg`` and load what it needs; raises ``UserError`` before any simulation runs."""
    cfg = make_config(**cfg.model_dump())
    gpu, model = gpu_spec(cfg.gpu), model_spec(cfg.model)
    # SLOs not given are the model's defaults (spec data names their source).
    slo_ttft_ms, slo_itl_ms = cfg.slo_ttft_ms or model.slo.ttft_ms, cfg.slo_itl_ms or model.slo.itl_ms
    cfg = cfg.model_copy(update={"slo_ttft_ms": slo_ttft_ms, "slo_itl_ms": slo_itl_ms})
    pm = PerfModel(gpu, model, engine_spec(cfg.engine), tp=cfg.tp or model.default_tp)
    truth: InstanceModel = pm
    if cfg.profile is not None:
        prof = load_profile(cfg.profile)
        _same_target("profile", prof.meta.gpu, prof.meta.model, cfg)
        truth = ProfileModel(prof, pm)
    predictor = None
    if cfg.predictor is not None:
        predictor = load_predictor(cfg.predictor)
        _same_target("predictor", str(predictor.info.get("gpu")), str(predictor.info.get("model")), cfg)
    tuned = None
    validated_router = DEFAULT_PREFILL_ROUTER  # the prefill routing the tuned knobs were validated with
    if cfg.tuned is not None:
        tc = load_tuned(cfg.tuned)
        if tc.policy is None:
            raise UserError(f"{cfg.tuned} has no policy section (it is a --fit-only predictor): give it as the "
                            "predictor, or write a tuned config with `voltana tune`", field="tuned")
        _same_target("tuned", str(tc.provenance.get("gpu")), str(tc.provenance.get("model")), cfg)
        tuned = tc.policy
        if predictor is None and tc.predictor is not None:
            predictor = tc.predictor  # the knobs were tuned with this predictor
        validated_router = tc.prefill_router
    prefill_router = cfg.prefill_router or validated_router
    notes = []
    if cfg.tuned is not None and prefill_router != validated_router:
        if tuned is not None and tuned.prefill_router is not None:
            notes.append(f"voltana-tuned's knobs were tuned and validated against policies whose prefill was routed "
                         f"{validated_router}; this run routes theirs {prefill_router} (voltana-tuned keeps its own, "
                         f"{tuned.prefill_router})")
        else:
            notes.append(f"voltana-tuned's knobs were tuned and validated with prefill router {validated_router}; "
                         f"this run routes prefill with {prefill_router}")
    cfg = cfg.model_copy(update={"prefill_router": prefill_router})
    cluster = ClusterConfig(n_prefill=cfg.n_prefill, n_decode=cfg.n_decode, noise=cfg.noise,
                            chunked_prefill_tokens=cfg.chunked_prefill_tokens)
    cluster.validate()
    ecof = EcoFreqParams(
        clocks_mhz=tuple(cfg.ecofreq_clocks_mhz) if cfg.ecofreq_clocks_mhz else None,
        margin=cfg.ecofreq_margin,
    )
    for c in ecof.clocks_mhz or ():
        if c not in pm.clocks:
            raise UserError(f"{c} MHz is not a supported clock of {pm.gpu.name}; use one of {pm.clocks[0]}-"
                            f"{pm.clocks[-1]} MHz in steps of {pm.gpu.sm_clock_mhz.step}", field="ecofreq_clocks_mhz")
    _check_size(cfg)
    lengths, arrival = _lengths(cfg)
    scenario = Scenario(pm, truth, cluster, lengths, arrival, duration_s=cfg.duration_s, num_prompts=cfg.num_prompts,
                        burstiness=cfg.burstiness, slo_ttft_s=slo_ttft_ms / 1e3, slo_itl_s=slo_itl_ms / 1e3,
                        prediction_error=cfg.prediction_error, ecofreq=ecof, tile=cfg.tile or pm.engine.gemm_tile,
                        prefill_router=prefill_router, fitted=predictor, tuned=tuned)
    for name in cfg.policies:
        if not REGISTRY.searched(name):
            scenario.policy(name, cfg.seed)  # every name builds before any run
    _check_context(lengths, pm)
    return PreparedBench(cfg, pm, truth, predictor, cluster, ecof, lengths, arrival, scenario, notes)


def _check_size(cfg: BenchConfig) -> None:
    """Refuse, before anything is allocated, a run that would simulate more requests than the limit."""
    if cfg.num_prompts is not None:
        if cfg.num_prompts > MAX_REQUESTS_PER_RUN:
            raise UserError(f"{cfg.num_prompts:,} is above the limit of {MAX_REQUESTS_PER_RUN:,} requests per run "
                            "(memory and time)", field="num_prompts")
        return
    expected = max(cfg.request_rates) * (cfg.duration_s or 0.0)
    if expected > MAX_REQUESTS_PER_RUN:
        raise UserError(f"{cfg.duration_s:g} s at {max(cfg.request_rates):g} req/s is about {expected:,.0f} requests; the "
                        f"limit is {MAX_REQUESTS_PER_RUN:,} per run (memory and time): shorten the duration or lower "
                        "the rate", field="duration_s")


def _check_context(lengths: LengthTrace, pm: PerfModel) -> None:
    """Every request must fit the model's context, as a server would require."""
    ctx = pm.model.max_context_tokens
    total = lengths.input_tokens.astype(np.int64) + lengths.output_tokens
    over = total > ctx
    if over.any():
        raise UserError(f"{int(over.sum())} request(s) of {lengths.name} need more than {pm.model.name}'s context of "
                        f"{ctx:,} tokens (the longest: {int(total.max()):,}): filter them out of the dataset, or choose "
                        "a model with a longer context", field="dataset")


def _same_target(field: str, gpu: str, model: str, cfg: BenchConfig) -> None:
    if gpu != cfg.gpu or model != cfg.model:
        raise UserError(f"it is for {gpu} x {model}, but the bench simulates {cfg.gpu} x {cfg.model}: set gpu "
                        f"{gpu} and model {model}, or give a matching {field}", field=field)


def run_bench_full(cfg: BenchConfig | PreparedBench, progress: Callable[[str], None] | None = None) -> BenchOutput:
    """Run every (rate, policy) of ``cfg``; returns the report and the raw results."""
    prep = cfg if isinstance(cfg, PreparedBench) else prepare_bench(cfg)
    cfg, arrival = prep.cfg, prep.arrival

    runs: list[RunRecord] = []
    out_runs: list[dict] = []
    notes: list[str] = list(prep.notes)
    for rate in cfg.request_rates:
        # The same requests and arrivals for every policy at a rate: differences come from the policy.
        wl = prep.scenario.workload(rate, cfg.seed)
        short = _short_trace(cfg, arrival, wl, rate)
        if short:
            notes.append(short)
        for name in cfg.policies:
            if progress:
                progress(f"{rate:g} req/s, {name}")
            ran_as = _resolve(prep, name, rate)
            res = prep.scenario.simulate(ran_as, wl, cfg.seed)
            s = summarize(res, prep.scenario.slo_ttft_s, prep.scenario.slo_itl_s).as_dict()
            runs.append(RunRecord(rate, name, res, s))
            # A searched policy says what its search found (e.g. static-best ran as static:1095/780).
            # A yardstick (the oracle reads the simulator's truth) is flagged in every report.
            out_runs.append({"request_rate": rate, "policy": name, **({"ran_as": ran_as} if ran_as != name else {}),
                             **({"yardstick": True} if REGISTRY.entry(name).yardstick else {}), **s})
    return BenchOutput(bench_report(prep, out_runs, notes), runs, notes)


def bench_report(prep: PreparedBench, out_runs: list[dict], notes: list[str], live: dict | None = None) -> dict:
    """The bench JSON of ``out_runs`` (each gets its saving against static-max at its rate); ``live``: the
    live run's own config entries (a simulated run has none, and keeps the JSON it always had)."""
    cfg, pm, ecof, lengths = prep.cfg, prep.model, prep.ecofreq, prep.lengths
    top = ("static-max", f"static:{pm.clocks[-1]}", f"static:{pm.clocks[-1]}/{pm.clocks[-1]}")
    base = {r: next((x for x in out_runs if x["request_rate"] == r and x["policy"] in top), None) for r in cfg.request_rates}
    for x in out_runs:
        b = base[x["request_rate"]]
        x["saving_vs_static_max"] = (1 - x["energy_j"]["total"] / b["energy_j"]["total"]) if b else None
    sim = {
        "backend": "sim",
        "ground_truth": f"profile {prep.truth.profile.source}" if isinstance(prep.truth, ProfileModel)
        else "analytical model",
        "predictor_used": f"EcoPred from {cfg.predictor}" if prep.predictor is not None
        else f"analytical model with ±{cfg.prediction_error:g} error",
    }
    return {
        "voltana_version": __version__,
        "config": {
            # ``tuned`` is echoed only when given: a run without it keeps the JSON it had before the option.
            **cfg.model_dump(mode="json", exclude={"tuned"} if cfg.tuned is None else None),
            "tp": pm.tp,
            "arrival": prep.arrival,
            **(live if live is not None else sim),
            "itl_rule": ITL_RULE,
            "ecofreq_clocks_mhz": list(ecof.clocks_mhz or pm.gpu.ecofreq_levels_mhz),
            "ecofreq_margins": {ph: round(PAPER_RUN_MARGINS[ph] if ecof.margin is None else ecof.margin, 6)
                                for ph in ("prefill", "decode")},
            "kv_capacity_tokens_per_decode_instance": pm.kv_capacity_tokens,
            "workload_notes": [*lengths.notes, *notes],
            "dataset_name": lengths.name,
        },
        "runs": out_runs,
    }


def run_bench(cfg: BenchConfig) -> dict:
    """Run ``cfg`` and return the report dict."""
    return run_bench_full(cfg).report


def per_request_frame(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per request per run, for ``--csv``."""
    frames = []
    for r in runs:
        df = request_frame(r.result)
        df.insert(0, "policy", r.policy)
        df.insert(0, "request_rate", r.rate)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _lengths(cfg: BenchConfig) -> tuple[LengthTrace, str]:
    """The dataset's token lengths and the arrival process to use (``auto`` resolved)."""
    req = DatasetRequest(cfg.dataset, cfg.dataset_path, cfg.tokenizer, cfg.random_input_len, cfg.random_output_len,
                         cfg.random_range_ratio)
    n_hint = cfg.num_prompts or int(max(cfg.request_rates) * (cfg.duration_s or 0) * 1.2) + 64
    lengths = load_lengths(req, np.random.default_rng(cfg.seed), n_hint)
    arrival = cfg.arrival
    if arrival == "auto":
        arrival = "trace" if lengths.arrival_s is not None and cfg.dataset != "sharegpt" else "poisson"
    return lengths, arrival


#: The joint attainment static-best must reach in bench (tune takes its own target).
BENCH_TARGET = 0.99


def _resolve(prep: PreparedBench, name: str, rate: float) -> str:
    """The policy a name runs as at ``rate``: a searched one (static-best, colocated, the oracle) becomes what
    its search found (when no candidate meets the requirement: what keeps the most)."""
    if not REGISTRY.searched(name):
        return name
    base = prep.scenario.run("static-max", rate, prep.cfg.seed)
    req = requirement_for(base["attainment"]["both"], BENCH_TARGET)
    found = find_searched(prep.scenario, name, rate, [prep.cfg.seed], req, static_max=[base])
    return found.best.name if found.best else searched_fallback(prep.scenario, name)


def bench_timeline(prep: PreparedBench, report: dict) -> Timeline:
    """The run a bench plot's timeline shows: the first policy whose clocks move (not a static or colocated
    one; else the first) at the middle rate, simulated again with its traces recorded (same seed, same run)."""
    cfg = prep.cfg
    moving = [p for p in cfg.policies if not REGISTRY.searched(p) and
              REGISTRY.entry(p).name not in ("static", "static-max", "static-min", "colocated")]
    name = (moving or list(cfg.policies))[0]
    rates = sorted(cfg.request_rates)
    rate = rates[(len(rates) - 1) // 2]
    ran = next(r for r in report["runs"] if r["policy"] == name and r["request_rate"] == rate)
    ran_as = ran.get("ran_as", name)
    label = f"{name}{f' ({ran_as})' if ran_as != name else ''} at {rate:g} req/s"
    return Timeline(label, prep.scenario.timeline(ran_as, rate, cfg.seed))


def _short_trace(cfg: BenchConfig, arrival: str, wl: Workload, rate: float) -> str | None:
    """A note when a timestamped trace, scaled to ``rate``, ends well before the duration asked for."""
    if arrival != "trace" or cfg.num_prompts or cfg.duration_s is None or len(wl) < 2:
        return None
    span = float(wl.arrival_s[-1] - wl.arrival_s[0])
    covered = span + span / (len(wl) - 1)  # the last request's own gap
    if covered >= 0.95 * cfg.duration_s:
        return None
    return (f"at {rate:g} req/s the trace's {len(wl):,} requests cover {covered:.0f} s of the {cfg.duration_s:g} s "
            "asked: the run is that much shorter (a longer trace, or a lower rate, fills the window)")


def workload_of(cfg: BenchConfig, rate: float) -> Workload:
    """The workload ``run_bench`` simulates at ``rate`` (for tests and notebooks)."""
    return prepare_bench(cfg).scenario.workload(rate, cfg.seed)
