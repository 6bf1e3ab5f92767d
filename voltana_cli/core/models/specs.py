"""Hardware, model and engine specs: data files under ``voltana_cli/data``, validated on load."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voltana_cli.core.errors import UserError, validation_problem
from voltana_cli.core.paths import data_dir


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClockRange(_Strict):
    min: int = Field(gt=0)
    max: int = Field(gt=0)
    step: int = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> ClockRange:
        if self.max < self.min:
            raise ValueError("max < min")
        return self


class GpuCalibration(_Strict):
    """Fitted constants of the performance and power model (see ``perfmodel``)."""

    compute_efficiency: float = Field(gt=0, le=1)
    decode_compute_efficiency: float = Field(gt=0, le=1)
    bandwidth_efficiency: float = Field(gt=0, le=1)
    attention_bandwidth_efficiency: float = Field(gt=0, le=1)
    attention_compute_efficiency: float = Field(gt=0, le=1)
    memory_clock_sensitivity: float = Field(ge=0, le=1)
    static_power_w: float = Field(ge=0)
    clock_power_w_per_mhz: float = Field(ge=0)
    sm_dynamic_power_w_per_mhz: float = Field(gt=0)
    voltage_floor_mhz: float = Field(gt=0)
    voltage_slope_per_mhz: float = Field(ge=0)
    hbm_power_w: float = Field(ge=0)
    sm_activity_floor: float = Field(ge=0, le=1)
    overhead_activity: float = Field(ge=0, le=1)


class GpuSpec(_Strict):
    name: str
    display_name: str
    memory_gib: float = Field(gt=0)
    sm_clock_mhz: ClockRange
    memory_clock_mhz: int = Field(gt=0)
    power_limit_w: float = Field(gt=0)
    min_power_limit_w: float = Field(gt=0)
    idle_power_w: float = Field(gt=0)
    hbm_bandwidth_gbps: float = Field(gt=0)
    bf16_dense_tflops: float = Field(gt=0)
    nvlink_bandwidth_gbps: float = Field(gt=0)
    host_copy_gbps: float = Field(gt=0, description="GPU <-> pinned host memory, one direction, as achieved over "
                                  "the PCIe link (where a decode's retracted KV goes)")
    clock_switch_ms: float = Field(ge=0)
    ecofreq_levels_mhz: tuple[int, ...] = Field(min_length=1, description="the paper's EcoFreq clock levels on this GPU")
    profile_clock_step_mhz: int = Field(gt=0, description="spacing of the clocks a default profile visits")
    calibration: GpuCalibration

    @model_validator(mode="after")
    def _levels_supported(self) -> GpuSpec:
        bad = [c for c in self.ecofreq_levels_mhz if c not in self.clocks_mhz]
        if bad:
            raise ValueError(f"ecofreq_levels_mhz {bad[0]} is not a supported clock")
        return self

    @property
    def clocks_mhz(self) -> list[int]:
        """Supported SM clocks, ascending."""
        c = self.sm_clock_mhz
        return list(range(c.min, c.max + 1, c.step))

    @property
    def max_clock_mhz(self) -> int:
        """The highest supported SM clock."""
        return self.clocks_mhz[-1]

    @property
    def min_clock_mhz(self) -> int:
        """The lowest supported SM clock."""
        return self.clocks_mhz[0]


class ModelSlo(_Strict):
    """A model's default SLOs and where they come from (bench and tune use them unless told otherwise)."""

    ttft_ms: float = Field(gt=0)
    itl_ms: float = Field(gt=0)
    source: str = Field(min_length=1)


class ModelSpec(_Strict):
    name: str
    hf_id: str
    slo: ModelSlo
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    num_params_b: float = Field(gt=0)
    tied_embeddings: bool = False
    max_context_tokens: int = Field(gt=0)
    default_tp: int = Field(default=1, gt=0)
    dtype_bytes: int = Field(default=2, gt=0)

    @property
    def layer_linear_params(self) -> int:
        """Parameters of one layer's projections (q, k, v, o, gate, up, down)."""
        h, hd = self.hidden_size, self.head_dim
        qkv = h * hd * (self.num_attention_heads + 2 * self.num_kv_heads)
        o = hd * self.num_attention_heads * h
        mlp = 3 * h * self.intermediate_size
        return qkv + o + mlp

    @property
    def linear_params(self) -> int:
        """Parameters of all layers' projections (what every token multiplies)."""
        return self.layer_linear_params * self.num_layers

    @property
    def lm_head_params(self) -> int:
        """Parameters of the output projection (vocabulary x hidden)."""
        return self.vocab_size * self.hidden_size

    @property
    def weight_bytes(self) -> int:
        """Bytes read per forward pass: projections + LM head (+ embeddings are gathered, not read)."""
        return (self.linear_params + self.lm_head_params) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token takes across all layers (keys and values)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


class EngineSpec(_Strict):
    name: str
    cuda_graph_max_bs: int = Field(gt=0)
    eager_overhead_ms: float = Field(ge=0)
    gemm_tile: int = Field(gt=0)
    tile_waste: float = Field(ge=0, le=1)
    iteration_overhead_ms: float = Field(ge=0)
    overhead_clock_fraction: float = Field(ge=0, le=1)
    decode_request_overhead_us: float = Field(ge=0)
    prefill_request_overhead_us: float = Field(ge=0)
    allreduce_latency_us: dict[int, float] = Field(min_length=1, description="fixed time of one all-reduce (µs) by "
                                                  "TP degree; a degree absent here takes the next larger one's")

    def allreduce_latency_s(self, tp: int) -> float:
        """Fixed time of one all-reduce across ``tp`` GPUs (s): the table's entry for ``tp``, else the next
        larger degree's, else the largest's."""
        table = self.allreduce_latency_us
        larger = [d for d in sorted(table) if d >= tp]
        return table[larger[0] if larger else max(table)] * 1e-6
    chunked_prefill_tokens: int = Field(gt=0)
    prefill_overlap_schedule: bool = Field(description="the prefill loop forms batch k+1 when batch k starts")
    decode_reserved_tokens: int = Field(ge=0, description="KV tokens a P/D decode instance keeps free per active "
                                        "request when it pre-allocates a new one (num_reserved_decode_tokens)")
    retract_decode_steps: int = Field(20, gt=0, description="when a decode step finds no KV room for the next "
                                      "tokens, running requests are retracted until this many steps fit "
                                      "(retract_decode_steps)")
    mem_fraction_static: float = Field(gt=0, le=1)
    kv_transfer_gbps: float = Field(gt=0)
    kv_transfer_latency_ms: float = Field(ge=0)
    pd_handoff: Literal["bootstrap", "after_prefill"] = Field(
        "bootstrap", description="bootstrap: the router posts a request to its prefill and decode instances at once "
        "and the prefill waits for the decode's KV pre-allocation (a real transfer backend); after_prefill: the "
        "router posts it to the decode instance only when its prefill has answered, and no KV moves (SGLang's "
        "fake transfer backend behind the VoltanaLLM router's --fake-transfer-v2)")
    decode_max_running_requests: int | None = Field(None, gt=0, description="--max-running-requests of a decode "
                                                    "instance (None: SGLang's default, which does not bind here)")
    # The request path: time a request spends outside the instances' schedulers, in the stack's transport. A
    # client measures TTFT across all of it (as the paper's did); the GPUs see none of it.
    request_ingress_ms: float = Field(0.0, ge=0, description="client send -> the request queued at its instances "
                                      "(the router, HTTP, parsing)")
    bootstrap_latency_ms: float = Field(0.0, ge=0, description="a decode instance pre-allocates a request's KV -> "
                                        "its prefill instance may schedule it (the P/D handshake's message)")
    token_egress_ms: float = Field(0.0, ge=0, description="a token leaves its decode instance's scheduler -> the "
                                   "client has it (streaming, the router)")

    @property
    def path_s(self) -> float:
        """The fixed part of every request's TTFT and end-to-end time that is transport (s): ingress and egress."""
        return (self.request_ingress_ms + self.token_egress_ms) / 1e3


def _available(kind: str) -> list[str]:
    return sorted(p.stem for p in (data_dir() / kind).glob("*.yaml"))


def _load(kind: str, name: str, cls: type[_Strict], field: str) -> _Strict:
    """Load spec ``name`` of ``kind`` (``gpus``, ``models``, ``engines``).

    Raises:
        UserError: about ``field`` when no such spec ships; the message lists the ones that do.
    """
    path = data_dir() / kind / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown {field} {name!r}: use one of {', '.join(_available(kind))}", field=field)
    return load_spec_file(path, cls)


def load_spec_file(path: Path, cls: type[_Strict]) -> _Strict:
    """Load and validate one spec file.

    Raises:
        UserError: the file is not valid YAML or not a valid ``cls``; the message names the file and the
            offending field's path inside it.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__}): fix the file") from None
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        loc, msg = validation_problem(exc)
        raise UserError(f"{path}: {loc or '(top level)'}: {msg}") from None


#: Specs replaced for the duration of a ``spec_overrides`` block: (kind, name) -> spec.
_OVERRIDES: dict[tuple[str, str], _Strict] = {}


@cache
def _gpu_file(name: str) -> GpuSpec:
    return _load("gpus", name, GpuSpec, "gpu")  # type: ignore[return-value]


@cache
def _model_file(name: str) -> ModelSpec:
    return _load("models", name, ModelSpec, "model")  # type: ignore[return-value]


@cache
def _engine_file(name: str) -> EngineSpec:
    return _load("engines", name, EngineSpec, "engine")  # type: ignore[return-value]


def gpu_spec(name: str) -> GpuSpec:
    """The spec of GPU ``name`` (e.g. ``a100-80g-sxm4``); an unknown name is a ``UserError`` about ``gpu``."""
    key = name.lower()
    return _OVERRIDES.get(("gpus", key)) or _gpu_file(key)  # type: ignore[return-value]


def model_spec(name: str) -> ModelSpec:
    """The spec of model ``name`` (e.g. ``llama-3.1-8b``); an unknown name is a ``UserError`` about ``model``."""
    key = name.lower()
    return _OVERRIDES.get(("models", key)) or _model_file(key)  # type: ignore[return-value]


def engine_spec(name: str = "sglang") -> EngineSpec:
    """The spec of serving engine ``name``; an unknown name is a ``UserError`` about ``engine``."""
    key = name.lower()
    return _OVERRIDES.get(("engines", key)) or _engine_file(key)  # type: ignore[return-value]


#: A ``spec_overrides`` key's first part -> the spec folder, class and loader.
_KINDS: dict[str, tuple[str, type[_Strict], Callable[[str], _Strict]]] = {
    "gpu": ("gpus", GpuSpec, gpu_spec), "model": ("models", ModelSpec, model_spec),
    "engine": ("engines", EngineSpec, engine_spec)}


@contextmanager
def spec_overrides(changes: Mapping[str, Any], names: Mapping[str, str]) -> Iterator[None]:
    """Run a block with some spec fields changed, for sensitivity studies (``benchmarks/calibration.py --set``).

    ``changes`` maps a dotted key to a value: the first part is ``gpu``, ``model`` or ``engine``, the rest the
    field's path inside that spec (``gpu.calibration.compute_efficiency``, ``engine.iteration_overhead_ms``).
    ``names`` says which spec of each kind is meant (``{"gpu": "a100-80g-sxm4", ...}``). Each changed spec is
    validated as its file would be; inside the block ``gpu_spec``/``model_spec``/``engine_spec`` return it, and
    the shipped specs come back when the block ends, however it ends.

    Raises:
        UserError: a key names no spec kind or no field of its spec, a kind has no name in ``names``, or a
            value fails the spec's validation; the message names the key.
    """
    grouped: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        kind, _, path = key.partition(".")
        if kind not in _KINDS or not path:
            raise UserError(f"{key!r}: a spec key starts with gpu., model. or engine. and names a field "
                            "(e.g. gpu.calibration.compute_efficiency)")
        if kind not in names:
            raise UserError(f"{key!r}: no {kind} is chosen to change")
        grouped.setdefault(kind, {})[path] = value
    replaced: dict[tuple[str, str], _Strict] = {}
    for kind, fields in grouped.items():
        folder, cls, load = _KINDS[kind]
        name = names[kind].lower()
        raw = load(name).model_dump()
        for path, value in fields.items():
            *parents, leaf = path.split(".")
            node = raw
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise UserError(f"{kind}.{path}: {part!r} is not a section of the {kind} spec {name}")
                node = node[part]
            if leaf not in node:
                raise UserError(f"{kind}.{path}: the {kind} spec {name} has no field {leaf!r}")
            node[leaf] = value
        try:
            replaced[(folder, name)] = cls.model_validate(raw)
        except ValidationError as exc:
            loc, msg = validation_problem(exc)
            raise UserError(f"{kind}.{loc}: {msg}") from None
    saved = {k: _OVERRIDES[k] for k in replaced if k in _OVERRIDES}
    _OVERRIDES.update(replaced)
    try:
        yield
    finally:
        for k in replaced:
            if k in saved:
                _OVERRIDES[k] = saved[k]
            else:
                _OVERRIDES.pop(k, None)


class Defaults(_Strict):
    """What a command simulates when it is not told (``data/defaults.yaml``)."""

    gpu: str
    model: str


@cache
def defaults() -> Defaults:
    """The default GPU and model keys."""
    return load_spec_file(data_dir() / "defaults.yaml", Defaults)  # type: ignore[return-value]


def available_gpus() -> list[str]:
    """Names of the shipped GPU specs, sorted."""
    return _available("gpus")


def available_models() -> list[str]:
    """Names of the shipped model specs, sorted."""
    return _available("models")
