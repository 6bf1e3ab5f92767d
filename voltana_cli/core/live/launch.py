"""Starting and stopping a cluster's instances: SGLang command lines (stock SGLang, no fork), emulated
engines, per-instance logs, health waits and a clean stop.

``plan`` says exactly what ``voltana serve`` would start (``--dry-run`` prints it); ``Supervisor`` starts
it, waits for every instance's ``/health``, watches the processes and stops them (SIGTERM, then SIGKILL
after a grace period), whatever ends the run.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from voltana_cli.core.errors import UserError
from voltana_cli.core.live.config import ClusterSpec, InstanceSpec
from voltana_cli.core.live.upstream import self_connected
from voltana_cli.core.models import model_spec

#: The SGLang releases whose launch flags this launcher was checked against (``../shared/SGLANG.md``):
#: 0.5.19 brought the forward-pass metrics stream the sidecars read; 0.5.23 is the newest checked.
SGLANG_MIN, SGLANG_MAX = (0, 5, 19), (0, 5, 23)
#: SGLang's NCCL ports: instance i of a host takes NCCL_BASE + i.
NCCL_BASE = 29600


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not p.isdigit():
            break
    return tuple(parts)


def installed_sglang() -> str | None:
    """The installed SGLang version, or ``None``."""
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def check_sglang(version: str | None) -> str:
    """``version`` if this launcher supports it, else a ``UserError`` saying what to install."""
    lo, hi = ".".join(map(str, SGLANG_MIN)), ".".join(map(str, SGLANG_MAX))
    if version is None:
        raise UserError(f"engine sglang needs SGLang {lo}-{hi}: pip install 'voltana[sglang]' (or use --engine sim "
                        "to run emulated engines)", field="engine")
    v = _version_tuple(version)[:3]
    if not SGLANG_MIN <= v <= SGLANG_MAX:
        raise UserError(f"SGLang {version} is installed; voltana serve supports {lo}-{hi} (launch flags and the "
                        f"metrics stream change within 0.5.x): pip install 'sglang=={hi}'", field="engine")
    return version


def answers_200(url: str, timeout_s: float) -> bool:
    """Whether a GET of ``url`` answers 200. Refused, reset, timed out, a self-connection (see
    ``self_connected``) or anything that is not an HTTP answer are all "not yet", never an exception."""
    u = urllib.parse.urlsplit(url)
    try:
        sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=timeout_s)
    except OSError:
        return False
    with sock:
        if self_connected(sock):
            return False
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout_s)
        conn.sock = sock
        try:
            conn.request("GET", u.path or "/")
            r = conn.getresponse()
            r.read()
            return r.status == 200
        except (OSError, http.client.HTTPException):
            return False


@dataclass(frozen=True)
class Planned:
    """One process ``voltana serve`` starts."""

    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str]

    def shell(self) -> str:
        import shlex

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + " ".join(shlex.quote(a) for a in self.argv)


def _name(inst: InstanceSpec, index: int) -> str:
    return f"{inst.role}-{index}"


def sglang_argv(spec: ClusterSpec, inst: InstanceSpec, index: int, ipc_dir: Path,
                python: str = sys.executable) -> list[str]:
    """The stock ``sglang.launch_server`` command of one P/D instance."""
    model_path = spec.model_path or model_spec(spec.model).hf_id
    argv = [python, "-m", "sglang.launch_server", "--model-path", model_path, "--host", inst.host,
            "--port", str(inst.port), "--tp-size", str(inst.tp), "--base-gpu-id", str(min(inst.gpu_ids)),
            "--disaggregation-mode", inst.role, "--disaggregation-transfer-backend", spec.transfer_backend,
            "--nccl-port", str(NCCL_BASE + index), "--enable-metrics",
            # Per-iteration state for the controller sidecar, without patching SGLang (0.5.19+).
            "--enable-forward-pass-metrics", "--forward-pass-metrics-ipc-name",
            ipc_name(inst, ipc_dir)]
    if inst.role == "prefill":
        argv += ["--disaggregation-bootstrap-port", str(inst.bootstrap_port)]
    return argv


def ipc_name(inst: InstanceSpec, ipc_dir: Path) -> str:
    """The forward-pass metrics stream of an instance (the engine publishes it, its sidecar reads it)."""
    return f"ipc://{ipc_dir / f'voltana-{inst.role}-{inst.port}'}"


def engine_argv(spec: ClusterSpec, inst: InstanceSpec, ipc_dir: Path, python: str = sys.executable) -> list[str]:
    """The emulated engine's command of one instance."""
    argv = [python, "-m", "voltana_cli.core.live.run_engine", "--role", inst.role, "--host", inst.host,
            "--port", str(inst.port), "--gpu", spec.gpu, "--model", spec.model, "--tp", str(inst.tp),
            "--forward-pass-metrics-ipc-name", ipc_name(inst, ipc_dir)]
    if inst.bootstrap_port is not None:
        argv += ["--bootstrap-port", str(inst.bootstrap_port)]
    return argv


def sidecar_argv(spec: ClusterSpec, inst: InstanceSpec, ipc_dir: Path, policy: str,
                 python: str = sys.executable) -> list[str]:
    """The controller sidecar's command of one instance (NVML on SGLang's GPUs, the emulated GPU otherwise)."""
    argv = [python, "-m", "voltana_cli.core.live.run_sidecar", "--role", inst.role, "--ipc", ipc_name(inst, ipc_dir),
            "--url", inst.url, "--gpu", spec.gpu, "--model", spec.model, "--tp", str(inst.tp), "--policy", policy,
            "--slo-ttft-ms", f"{spec.slo_ttft_ms:g}", "--slo-itl-ms", f"{spec.slo_itl_ms:g}"]
    if spec.engine == "sglang":
        argv += ["--gpu-kind", spec.gpu_access, "--gpu-ids", ",".join(map(str, inst.gpu_ids))]
        if spec.gpu_access == "zeusd" and spec.zeusd_socket:
            argv += ["--zeusd-socket", spec.zeusd_socket]
    if spec.tuned is not None:
        argv += ["--tuned", str(spec.tuned)]
    host = "127.0.0.1" if spec.router.host in ("0.0.0.0", "::") else spec.router.host
    argv += ["--router-url", f"http://{host}:{spec.router.port}"]
    return argv


def sidecar_plan(spec: ClusterSpec, node: str | None, ipc_dir: Path, policy: str) -> list[Planned]:
    """One controller sidecar per instance of ``node`` (no health URL: it serves nothing)."""
    out = []
    for inst in spec.on_node(node):
        index = spec.of_role(inst.role).index(inst)
        out.append(Planned(f"sidecar-{inst.role}-{index}", sidecar_argv(spec, inst, ipc_dir, policy), "", {}))
    return out


def plan(spec: ClusterSpec, node: str | None, ipc_dir: Path) -> list[Planned]:
    """The instance processes of ``node`` (every instance when ``None``), in the config's order."""
    mine = spec.on_node(node)
    out = []
    per_host: dict[str, int] = {}
    for inst in spec.instances:
        i = per_host.get(inst.host, 0)
        per_host[inst.host] = i + 1
        if inst not in mine:
            continue
        index = spec.of_role(inst.role).index(inst)
        if spec.engine == "sglang":
            argv, env = sglang_argv(spec, inst, i, ipc_dir), dict[str, str]()
        else:
            argv, env = engine_argv(spec, inst, ipc_dir), dict[str, str]()
        out.append(Planned(_name(inst, index), argv, f"{inst.url}/health", env))
    return out


def check_ports_free(spec: ClusterSpec, node: str | None, router: bool, instances: bool = True) -> None:
    """Refuse, before starting anything, a port of this node that something already listens on."""
    wanted = [(i.host, p, f"{i.role} instance") for i in (spec.on_node(node) if instances else [])
              for p in (i.port, i.bootstrap_port) if p is not None]
    if router:
        wanted.append((spec.router.host, spec.router.port, "the router"))
    for host, port, what in wanted:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise UserError(f"port {port} on {host} ({what}) is not free: {exc.strerror or exc}; stop what holds "
                                "it or choose other ports", field="port") from None


class Supervisor:
    """Starts planned processes with per-process logs, waits for their health, stops them all.

    Args:
        log_dir: where ``<name>.log`` of each process goes.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.plans: dict[str, Planned] = {}

    def start(self, planned: list[Planned]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for p in planned:
            self.plans[p.name] = p
            self._spawn(p)

    def _spawn(self, p: Planned) -> None:
        log = open(self.log_dir / f"{p.name}.log", "ab")  # noqa: SIM115  (the child keeps its own copy)
        try:
            self.procs[p.name] = subprocess.Popen(p.argv, stdout=log, stderr=subprocess.STDOUT,
                                                  env={**os.environ, **p.env}, start_new_session=True)
        finally:
            log.close()

    def restart(self, name: str) -> None:
        """Start a process that exited again (the router finds it healthy again by its probe)."""
        self._spawn(self.plans[name])

    def replace(self, planned: list[Planned], grace_s: float = 10.0) -> None:
        """Stop every process, then start ``planned`` instead (a policy change restarts the sidecars)."""
        self.stop(grace_s)
        self.procs, self.plans = {}, {}
        self.start(planned)

    def log_tail(self, name: str, lines: int = 5) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def dead(self) -> list[tuple[str, int]]:
        """The processes that exited, with their exit codes."""
        return [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def wait_healthy(self, timeout_s: float) -> None:
        """Until every process answers its health URL; a process that exits, or the timeout, is a ``UserError``
        naming it with the end of its log."""
        pending = {n: p for n, p in self.plans.items() if p.health_url}
        deadline = time.monotonic() + timeout_s
        while pending:
            for name, p in list(pending.items()):
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise UserError(f"{name} exited with code {proc.returncode} before it was ready: "
                                    f"{self.log_tail(name) or 'no output'} (log: {self.log_dir / (name + '.log')})")
                if answers_200(p.health_url, timeout_s=1.0):
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise UserError(f"{', '.join(pending)} not healthy after {timeout_s:g} s (logs in {self.log_dir})")
            if pending:
                time.sleep(0.1)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process (its whole session), SIGKILL what is left after ``grace_s``."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
