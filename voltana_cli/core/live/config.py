"""The cluster a ``voltana serve`` runs: instances (role, host, ports, GPUs), router, SLOs, engine.

Written as YAML (``--config cluster.yaml``) or built from flags for the common one-machine case
(``cluster_from_flags``). Validated like the other specs: an unknown key, a duplicate port on a host, a
cluster without a prefill or a decode instance, GPU ids that overlap, each is one ``UserError`` naming the
field. Instances may live on several hosts; ``on_node`` picks one host's share, and the router reaches the
rest by URL.

Example::

    model: llama-3.1-8b
    gpu: a100-80g-sxm4
    engine: sglang            # or sim: emulated engines, no GPU
    model_path: meta-llama/Llama-3.1-8B-Instruct
    transfer_backend: mooncake
    gpu_access: nvml          # or zeusd: clocks through the Zeus daemon, no root (zeusd_socket, or ZEUSD_SOCK_PATH)
    router: {host: 127.0.0.1, port: 8000}
    slo_ttft_ms: 800
    slo_itl_ms: 50
    instances:
      - {role: prefill, host: 10.0.0.1, port: 30000, bootstrap_port: 8998, gpu_ids: [0]}
      - {role: decode, host: 10.0.0.1, port: 30001, gpu_ids: [1]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voltana_cli.core.errors import UserError, validation_problem
from voltana_cli.core.models import defaults, model_spec

ENGINES = ("sglang", "sim")
#: SGLang 0.5.23's KV transfer backends (``--disaggregation-transfer-backend``); ``fake`` is decode-only.
TRANSFER_BACKENDS = ("mooncake", "mooncake_tcp", "nixl", "mori", "ascend", "fake")
#: The first port flags-built clusters use: instance i serves on BASE_PORT + i, a prefill's bootstrap
#: server on BOOTSTRAP_BASE + i (SGLang's default bootstrap port is 8998).
BASE_PORT = 30000
BOOTSTRAP_BASE = 8998


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InstanceSpec(_Strict):
    """One SGLang (or emulated) server.

    Attributes:
        role: ``prefill`` or ``decode``.
        host: where it runs and listens.
        port: its HTTP port.
        bootstrap_port: a prefill's bootstrap server port (the decode instances fetch KV through it).
        gpu_ids: its GPUs on that host (``tp`` of them, contiguous for SGLang's ``--base-gpu-id``).
        tp: tensor parallelism.
    """

    role: Literal["prefill", "decode"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    bootstrap_port: int | None = Field(default=None, ge=1, le=65535)
    gpu_ids: list[int] = Field(default_factory=list)
    tp: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _check(self) -> InstanceSpec:
        if self.role == "prefill" and self.bootstrap_port is None:
            raise ValueError(f"prefill instance on port {self.port} needs a bootstrap_port (SGLang's default: 8998)")
        if self.role == "decode" and self.bootstrap_port is not None:
            raise ValueError(f"decode instance on port {self.port} has a bootstrap_port: only prefill instances serve one")
        if self.gpu_ids:
            if len(self.gpu_ids) != self.tp:
                raise ValueError(f"instance on port {self.port} has tp {self.tp} but {len(self.gpu_ids)} gpu_ids")
            if sorted(self.gpu_ids) != list(range(min(self.gpu_ids), min(self.gpu_ids) + self.tp)):
                raise ValueError(f"instance on port {self.port}: gpu_ids {self.gpu_ids} must be contiguous "
                                 "(SGLang places TP ranks from --base-gpu-id upward)")
            if min(self.gpu_ids) < 0:
                raise ValueError(f"instance on port {self.port}: GPU ids are >= 0")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class RouterSpec(_Strict):
    """Where the voltana router listens."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)


def _model_slo(data: dict, key: str) -> float:
    """The default SLO ``key`` (``ttft_ms``, ``itl_ms``) of the cluster's model."""
    return float(getattr(model_spec(str(data.get("model") or defaults().model)).slo, key))


class ClusterSpec(_Strict):
    """A P/D cluster for ``voltana serve`` (see the module docstring)."""

    model: str = Field(default_factory=lambda: defaults().model)
    gpu: str = Field(default_factory=lambda: defaults().gpu)
    engine: Literal["sglang", "sim"] = "sim"
    model_path: str | None = None
    transfer_backend: str = "mooncake"
    router: RouterSpec = Field(default_factory=RouterSpec)
    # SLOs not given are the model's defaults (spec data names their source), as in bench and tune.
    slo_ttft_ms: float = Field(default_factory=lambda data: _model_slo(data, "ttft_ms"), gt=0, le=3_600_000)
    slo_itl_ms: float = Field(default_factory=lambda data: _model_slo(data, "itl_ms"), gt=0, le=3_600_000)
    tuned: Path | None = None
    policy: str = "static-max"
    gpu_access: Literal["nvml", "zeusd"] = "nvml"
    zeusd_socket: str | None = None
    instances: list[InstanceSpec]

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        roles = {i.role for i in self.instances}
        for role in ("prefill", "decode"):
            if role not in roles:
                raise ValueError(f"the cluster has no {role} instance: a P/D cluster needs at least one of each")
        taken: dict[tuple[str, int], str] = {(self.router.host, self.router.port): "the router"}
        gpus: dict[tuple[str, int], int] = {}
        for inst in self.instances:
            for port, what in ((inst.port, f"{inst.role} instance"), (inst.bootstrap_port, "a bootstrap server")):
                if port is None:
                    continue
                key = (inst.host, port)
                if key in taken:
                    raise ValueError(f"port {port} on {inst.host} is used twice ({taken[key]} and {what})")
                taken[key] = what
            for g in inst.gpu_ids:
                if (inst.host, g) in gpus:
                    raise ValueError(f"GPU {g} on {inst.host} is given to two instances (ports {gpus[(inst.host, g)]} "
                                     f"and {inst.port}): one instance per GPU")
                gpus[(inst.host, g)] = inst.port
        if self.engine == "sglang" and any(not i.gpu_ids for i in self.instances):
            raise ValueError("engine sglang: give every instance its gpu_ids")
        if self.tuned is not None and "policy" not in self.model_fields_set:
            object.__setattr__(self, "policy", "voltana-tuned")  # a tuned config is there to be run
        if self.transfer_backend not in TRANSFER_BACKENDS:
            raise ValueError(f"transfer_backend {self.transfer_backend!r}: use one of {', '.join(TRANSFER_BACKENDS)}")
        if self.transfer_backend == "fake" and self.engine == "sglang":
            raise ValueError("transfer_backend fake runs decode on garbage KV and a prefill server refuses it: use "
                             "mooncake, mooncake_tcp or nixl for a P/D cluster")
        return self

    def of_role(self, role: str) -> list[InstanceSpec]:
        return [i for i in self.instances if i.role == role]

    def on_node(self, host: str | None) -> list[InstanceSpec]:
        """The instances a ``--node HOST`` starts (all of them when ``host`` is ``None``)."""
        if host is None:
            return list(self.instances)
        mine = [i for i in self.instances if i.host == host]
        if not mine:
            hosts = sorted({i.host for i in self.instances})
            raise UserError(f"no instance of the cluster runs on {host!r}: its hosts are {', '.join(hosts)}",
                            field="node")
        return mine


def _spec(fields: dict) -> ClusterSpec:
    try:
        return ClusterSpec.model_validate(fields)
    except ValidationError as exc:
        loc, msg = validation_problem(exc)
        raise UserError(msg.removeprefix("Value error, "), field=loc or None) from None


def load_cluster(path: Path) -> ClusterSpec:
    """Read and validate a cluster YAML file; every problem is one ``UserError`` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc.__class__.__name__}: {exc}", field="config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}",
                        field="config") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a cluster config is a mapping with an 'instances' list (see voltana serve --help)",
                        field="config")
    tuned = data.get("tuned")
    if isinstance(tuned, str) and not Path(tuned).is_absolute():
        data = {**data, "tuned": str(Path(path).parent / tuned)}  # relative to the config file
    try:
        return _spec(data)
    except UserError as exc:
        raise UserError(f"{path}: {str(exc)}", field="config") from None


def cluster_from_flags(engine: str, n_prefill: int, n_decode: int, model: str | None = None, gpu: str | None = None,
                       tp: int = 1, host: str = "127.0.0.1", port: int = 8000, base_port: int = BASE_PORT,
                       **extra: object) -> ClusterSpec:
    """The one-machine cluster of ``--prefill N --decode M``: instance i on ``base_port + i`` with GPUs
    ``[i * tp, (i + 1) * tp)``, prefill i's bootstrap server on ``8998 + i``; the router on ``host:port``."""
    for name, n in (("prefill", n_prefill), ("decode", n_decode)):
        if not 1 <= n <= 64:
            raise UserError(f"{n} {name} instances: give 1 to 64", field=name)
    instances = []
    for i in range(n_prefill + n_decode):
        role = "prefill" if i < n_prefill else "decode"
        instances.append({"role": role, "host": "127.0.0.1", "port": base_port + i,
                          "bootstrap_port": BOOTSTRAP_BASE + i if role == "prefill" else None,
                          "gpu_ids": list(range(i * tp, (i + 1) * tp)), "tp": tp})
    fields: dict = {"engine": engine, "instances": instances, "router": {"host": host, "port": port}, **extra}
    if model:
        fields["model"] = model
    if gpu:
        fields["gpu"] = gpu
    return _spec(fields)
