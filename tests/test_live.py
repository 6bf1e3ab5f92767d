"""The live world on this CPU-only machine: cluster config, the launch plan, and a real `voltana serve
--engine sim` (emulated engines + router as processes) driven by the `openai` client and `bench --url`."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from voltana_cli.core.errors import UserError
from voltana_cli.core.live import cluster_from_flags, load_cluster, plan, sglang_argv
from voltana_cli.core.live.launch import answers_200, check_sglang
from voltana_cli.core.live.upstream import self_connected

VOLTANA = [sys.executable, "-m", "voltana_cli"]


def _cfg(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


INST = [{"role": "prefill", "port": 30000, "bootstrap_port": 8998, "gpu_ids": [0]},
        {"role": "decode", "port": 30001, "gpu_ids": [1]}]


@pytest.mark.parametrize("data,msg", [
    ("instances: [", "is not valid YAML (line"),
    ("- a\n- b\n", "a cluster config is a mapping"),
    ({"instances": INST[:1]}, "has no decode instance"),
    ({"instances": [INST[0], {**INST[1], "port": 30000}]}, "port 30000 on 127.0.0.1 is used twice"),
    ({"instances": [INST[0], {**INST[1], "gpu_ids": [0]}]}, "GPU 0 on 127.0.0.1 is given to two instances"),
    ({"instances": [{**INST[0], "bootstrap_port": None}, INST[1]]}, "needs a bootstrap_port"),
    ({"instances": [INST[0], {**INST[1], "tp": 2, "gpu_ids": [1, 3]}]}, "must be contiguous"),
    ({"instances": INST, "engine": "vllm"}, "engine"),
    ({"instances": INST, "colour": "red"}, "colour"),
    ({"instances": INST, "transfer_backend": "rdma"}, "use one of mooncake"),
    ({"instances": [INST[0], {**INST[1], "port": 70000}]}, "65535"),
])
def test_a_bad_cluster_file_is_one_error_naming_it(tmp_path, data, msg):
    with pytest.raises(UserError) as err:
        load_cluster(_cfg(tmp_path, data))
    assert msg in str(err.value) and str(tmp_path / "cluster.yaml") in str(err.value)


def test_on_node_starts_one_hosts_share(tmp_path):
    spec = load_cluster(_cfg(tmp_path, {"instances": [
        {**INST[0], "host": "10.0.0.1"}, {**INST[1], "host": "10.0.0.2", "gpu_ids": [0]}]}))
    assert [i.role for i in spec.on_node("10.0.0.2")] == ["decode"]
    with pytest.raises(UserError, match="its hosts are 10.0.0.1, 10.0.0.2"):
        spec.on_node("10.0.0.9")


def test_the_sglang_plan_is_stock_sglang_p_d(tmp_path):
    spec = cluster_from_flags("sglang", 1, 2, tp=2)
    cmds = plan(spec, None, tmp_path)
    assert [c.name for c in cmds] == ["prefill-0", "decode-0", "decode-1"]
    pre = cmds[0].argv
    assert pre[1:3] == ["-m", "sglang.launch_server"]
    flags = dict(zip(pre[3::2], pre[4::2], strict=False))
    assert flags["--disaggregation-mode"] == "prefill" and flags["--tp-size"] == "2" and flags["--base-gpu-id"] == "0"
    assert "--disaggregation-bootstrap-port" in pre and "--enable-forward-pass-metrics" in pre
    dec = cmds[2].argv
    assert dec[dec.index("--base-gpu-id") + 1] == "4" and "--disaggregation-bootstrap-port" not in dec
    assert len({c.argv[c.argv.index("--nccl-port") + 1] for c in cmds}) == 3  # one NCCL port each


def test_every_sglang_flag_exists_in_the_pinned_release(tmp_path):
    """The launcher's flags, checked against the option list of sglang 0.5.23's server_args.py."""
    text = (Path(__file__).parent / "data" / "sglang-0.5.23-launch-flags.txt").read_text()
    known = {ln for ln in text.splitlines() if ln.startswith("--")}
    spec = cluster_from_flags("sglang", 1, 1)
    for inst in spec.instances:
        used = {a for a in sglang_argv(spec, inst, 0, tmp_path) if a.startswith("--")}
        assert used <= known, sorted(used - known)


def test_an_unsupported_or_missing_sglang_says_what_to_install():
    with pytest.raises(UserError, match=r"pip install 'voltana\[sglang\]'"):
        check_sglang(None)
    with pytest.raises(UserError, match="supports 0.5.19-0.5.23"):
        check_sglang("0.4.7")
    assert check_sglang("0.5.23") == "0.5.23"


def test_dry_run_prints_the_commands_and_starts_nothing():
    r = subprocess.run([*VOLTANA, "serve", "--dry-run", "--engine", "sglang", "--prefill", "1", "--decode", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("sglang.launch_server") == 2 and "--disaggregation-mode decode" in r.stdout


def test_serve_refuses_a_public_address_without_an_api_key():
    r = subprocess.run([*VOLTANA, "serve", "--host", "0.0.0.0", "--dry-run"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--api-key" in r.stderr


# ---- a real emulated cluster ----------------------------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    """``n`` consecutive free ports below the kernel's ephemeral range, so that a poll before a server listens
    can never be handed the port itself as its source and connect to itself."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(50):
        base = random.randint(min(20000, low // 2), low - n - 1)
        ports = list(range(base, base + n))
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return ports
        except OSError:
            continue
    raise RuntimeError("no free ports")


def _get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _serve(tmp_path: Path, n_decode: int = 1) -> tuple[subprocess.Popen, str, Path, list[int]]:
    ports = _free_ports(3 + 2 * n_decode)
    insts = [{"role": "prefill", "port": ports[0], "bootstrap_port": ports[1]}]
    insts += [{"role": "decode", "port": ports[2 + i]} for i in range(n_decode)]
    router = ports[-1]
    cfg = _cfg(tmp_path, {"engine": "sim", "instances": insts, "router": {"port": router}})
    log = tmp_path / "serve.log"
    state = tmp_path / "state"  # this cluster's clock-lock records
    proc = subprocess.Popen([*VOLTANA, "serve", "--config", str(cfg), "--admin-token", "s3cret"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "VOLTANA_STATE_DIR": str(state)})
    url = f"http://127.0.0.1:{router}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if answers_200(f"{url}/health", timeout_s=10):
            break
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("serve did not come up: " + log.read_text())
    return proc, url, log, [i["port"] for i in insts]


def _engine_pids(ports: list[int]) -> list[int]:
    pids = []
    for p in ports:
        out = subprocess.run(["pgrep", "-f", f"voltana_cli.core.live.run_engine .*--port {p} "], capture_output=True,
                             text=True)
        pids += [int(x) for x in out.stdout.split()]
    return pids


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_sim_end_to_end_with_the_openai_client_and_bench_url(tmp_path):
    import openai

    proc, url, log, ports = _serve(tmp_path)
    try:
        assert len(_engine_pids(ports)) == 2
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        stream = client.chat.completions.create(model="llama-3.1-8b", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=8, stream=True, stream_options={"include_usage": True})
        pieces, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert len(pieces) == 8 and usage is not None and usage.completion_tokens == 8
        done = client.completions.create(model="llama-3.1-8b", prompt=[1, 2, 3], max_tokens=4)
        assert done.usage.prompt_tokens == 3 and done.usage.completion_tokens == 4

        # Bad input: 4xx JSON, and the cluster keeps serving.
        for body, want in ((b"not json", "not valid JSON"), (b'{"prompt": 5}', "'prompt' must be"),
                           (b'{"prompt": "x", "max_tokens": "9"}', "must be an integer"),
                           (json.dumps({"prompt": [1] * 200_000}).encode(), "exceed the model's context")):
            status, err = _post(f"{url}/v1/completions", body)
            assert status == 400 and want in err["error"]["message"], (status, err)
        assert _post(f"{url}/admin/policy", b'{"policy": "static-min"}')[0] == 401
        status, err = _post(f"http://127.0.0.1:{ports[-1]}/_voltana/clock", b"not json")  # an engine's own route
        assert status == 400 and "not valid JSON" in err["error"]["message"]
        assert _post(f"{url}/admin/policy", b'{"policy": "static-min"}', {"Authorization": "Bearer nope"})[0] == 401
        status, body = _post(f"{url}/admin/policy", b'{"policy": "oracle"}', {"Authorization": "Bearer s3cret"})
        assert status == 400 and "yardstick" in body["error"]["message"]

        # A client that goes away mid-stream: both instances drop the request and the decode frees its KV at once
        # (500 tokens would take about 6.5 s).
        req = urllib.request.Request(f"{url}/generate", data=json.dumps(
            {"input_ids": [1] * 100, "sampling_params": {"max_new_tokens": 500}, "stream": True}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.readline().startswith(b"data:")
        decode_url = f"http://127.0.0.1:{ports[-1]}"
        assert _wait_for(lambda: _get(f"{decode_url}/_voltana/state")[1]["kv_tokens"] == 0, 4.0)
        assert _get(f"{decode_url}/_voltana/state")[1]["running"] == 0

        # bench --url: the simulated bench's workload and JSON, measured live; the policy set through admin.
        out = tmp_path / "live.json"
        r = subprocess.run([*VOLTANA, "bench", "--url", url, "--request-rate", "4", "--duration-s", "3",
                            "--policy", "static:1200/990", "--admin-token", "s3cret", "--json", str(out)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rep = json.loads(out.read_text())
        run = rep["runs"][0]
        assert rep["config"]["backend"] == "live" and run["policy"] == "static:1200/990"
        assert run["energy_j"]["total"] > 0 and run["failed_requests"] == 0 and run["num_requests"] > 0
        assert run["attainment"]["both"] > 0.9
        status, cl = _get(f"{url}/cluster")
        assert {(i["role"], i["clock_mhz"]) for i in cl["instances"]} == {("prefill", 1200), ("decode", 990)}
        (pre,) = [i for i in cl["instances"] if i["role"] == "prefill"]
        assert pre["waits_s"] == [] and pre["pending"] == 0  # every prefill answered
        assert 0 < pre["recent_ttft_s"] < 1.0  # the latest TTFT
        r = subprocess.run([*VOLTANA, "bench", "--url", url, "--noise", "0.1"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "--noise" in r.stderr and r.stderr.count("\n") == 1
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()
    assert _engine_pids(ports) == []  # nothing left behind


def test_a_backend_killed_midway_fails_its_requests_cleanly_and_the_rest_go_on(tmp_path):
    """A short load test (loopback, bounded in time and count) with one of two decode instances killed midway:
    every request gets an answer (200, or a JSON error) in bounded time; the killed instance is restarted."""
    from concurrent.futures import ThreadPoolExecutor

    proc, url, log, ports = _serve(tmp_path, n_decode=2)
    try:
        victim = _engine_pids([ports[-1]])
        assert len(victim) == 1

        def one(i: int) -> tuple[int, dict, float]:
            time.sleep(i * 0.05)
            t = time.monotonic()
            status, body = _post(f"{url}/v1/completions", json.dumps({"prompt": [1] * 64, "max_tokens": 60}).encode())
            return status, body, time.monotonic() - t

        with ThreadPoolExecutor(40) as pool:
            futures = [pool.submit(one, i) for i in range(40)]
            time.sleep(0.6)
            os.kill(victim[0], signal.SIGKILL)
            results = [f.result(timeout=60) for f in futures]
        statuses = [s for s, _, _ in results]
        assert set(statuses) <= {200, 502, 503} and statuses.count(200) >= 20 and 502 in statuses, statuses
        for status, body, took in results:
            assert took < 30
            if status != 200:
                assert body["error"]["message"]
        deadline = time.monotonic() + 20  # restarted and probed healthy again
        while time.monotonic() < deadline:
            if all(i["healthy"] for i in _get(f"{url}/cluster")[1]["instances"]):
                break
            time.sleep(0.5)
        assert all(i["healthy"] for i in _get(f"{url}/cluster")[1]["instances"]), log.read_text()
        assert _post(f"{url}/v1/completions", b'{"prompt": [1, 2], "max_tokens": 2}')[0] == 200
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()
    assert _engine_pids(ports) == []


def _locks(tmp_path: Path) -> dict[str, dict]:
    folder = tmp_path / "state" / "locks"
    return {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.is_dir() else {}


def _wait_for(cond, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_sidecars_run_the_policy_and_a_killed_one_has_its_clocks_reset_by_serve(tmp_path):
    """Each instance's sidecar holds its GPU's clock lock; kill -9 of one: serve resets that GPU's clocks from the
    dead owner's record and restarts it; at shutdown every clock is reset and no record is left."""
    proc, url, log, ports = _serve(tmp_path)
    try:
        status, body = _post(f"{url}/admin/policy", b'{"policy": "static:1200/990"}', {"Authorization": "Bearer s3cret"})
        assert status == 200, body
        assert _wait_for(lambda: {(i["role"], i["clock_mhz"]) for i in _get(f"{url}/cluster")[1]["instances"]}
                         == {("prefill", 1200), ("decode", 990)})
        locks = _locks(tmp_path)
        assert len(locks) == 2 and {r["clock_mhz"] for r in locks.values()} == {1200, 990}
        victim = next(r for r in locks.values() if r["clock_mhz"] == 990)["pid"]
        os.kill(victim, signal.SIGKILL)
        assert _wait_for(lambda: "locked its clocks at 990 MHz and is gone; the clocks are reset now" in log.read_text())
        assert _wait_for(lambda: any(r["pid"] != victim and r["clock_mhz"] == 990 for r in _locks(tmp_path).values()))
        # A dynamic policy runs in the sidecars too (the router cannot pin it).
        status, body = _post(f"{url}/admin/policy", b'{"policy": "voltana"}', {"Authorization": "Bearer s3cret"})
        assert status == 200 and body["policy"] == "voltana", body
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()
    assert "clocks reset" in log.read_text() and _locks(tmp_path) == {}
    assert _engine_pids(ports) == []


def _self_connected_socket() -> socket.socket:
    """A socket connected to itself: bound to a free port and connected to that same port (TCP simultaneous open,
    what the kernel can do by chance to a connect towards an ephemeral port nobody listens on)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.connect(s.getsockname())
    return s


def test_a_health_poll_that_reaches_itself_or_no_http_is_not_ready_and_never_raises():
    """CI once met this: the serve test's health poll of the router's port, before the router listened, was given
    that port as its source, connected to itself and read its own request back as the answer."""
    import threading

    with _self_connected_socket() as s:
        assert self_connected(s)
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0))
        a.listen()
        with socket.create_connection(a.getsockname()) as b:
            assert not self_connected(b)
            a.accept()[0].close()

        def echo() -> None:  # a server that echoes the request: the exact shape of a self-connection's answer
            c, _ = a.accept()
            with c:
                c.sendall(c.recv(4096))
        t = threading.Thread(target=echo, daemon=True)
        t.start()
        assert answers_200(f"http://127.0.0.1:{a.getsockname()[1]}/health", timeout_s=2) is False
        t.join(5)
    assert answers_200(f"http://127.0.0.1:{_free_ports(1)[0]}/health", timeout_s=1) is False


def test_the_upstream_client_refuses_a_connection_that_reached_itself(monkeypatch):
    import asyncio

    from voltana_cli.core.live.upstream import Upstream, UpstreamError

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.create_connection

        async def to_itself(factory, host, port, **kw):  # the kernel's chance, made certain
            return await real(factory, sock=_self_connected_socket())

        monkeypatch.setattr(loop, "create_connection", to_itself)
        client = Upstream(connect_timeout_s=1.0, read_timeout_s=1.0)
        with pytest.raises(UpstreamError, match="reached itself"):
            await client.post("127.0.0.1", 1, "/generate", b"{}")
        client.close()

    asyncio.run(main())


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path):
    ports = _free_ports(4)
    cfg = _cfg(tmp_path, {"engine": "sim", "router": {"port": ports[3]}, "instances": [
        {"role": "prefill", "port": ports[0], "bootstrap_port": ports[1]}, {"role": "decode", "port": ports[2]}]})
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports[2]))
        held.listen()
        r = subprocess.run([*VOLTANA, "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"port {ports[2]} on 127.0.0.1 (decode instance) is not free" in r.stderr
    assert _engine_pids(ports) == []


def _tuned_file(tmp_path: Path, gpu: str = "a100-80g-sxm4", prefill_router: str | None = None) -> Path:
    from voltana_cli.core.models import PerfModel, engine_spec, gpu_spec, model_spec
    from voltana_cli.core.policy.feedback import TunedPolicy
    from voltana_cli.core.tune import tune_document, write_document

    pm = PerfModel(gpu_spec("a100-80g-sxm4"), model_spec("llama-3.1-8b"), engine_spec())
    path = tmp_path / "tuned.yaml"
    write_document(path, tune_document(TunedPolicy.default_for(tuple(pm.clocks), pm.gpu.ecofreq_levels_mhz),
                                       {"gpu": gpu, "model": "llama-3.1-8b",
                                        **({"prefill_router": prefill_router} if prefill_router else {})}, {}))
    return path


def test_the_live_router_picks_prefill_instances_as_the_tuned_config_was_tuned(tmp_path):
    """Round-robin without a tuned config, and for a file that does not record its prefill routing (written
    before it was: random, as every tune ran then); else the router it records."""
    from voltana_cli.core.live.router import live_context
    from voltana_cli.core.models import PerfModel, engine_spec, gpu_spec, model_spec

    pm = PerfModel(gpu_spec("a100-80g-sxm4"), model_spec("llama-3.1-8b"), engine_spec())
    assert live_context(pm, 800, 50).prefill_router == "round-robin"
    (tmp_path / "old").mkdir()
    assert live_context(pm, 800, 50, _tuned_file(tmp_path / "old")).prefill_router == "random"
    rr = _tuned_file(tmp_path, prefill_router="least-loaded")
    assert live_context(pm, 800, 50, rr).prefill_router == "least-loaded"


def test_the_live_router_routes_voltana_tuned_prefill_as_its_config_chose(tmp_path):
    """A tuned config that chose its own prefill router: voltana-tuned routes with it, a reference policy
    with the one the config's references were run with."""
    from voltana_cli.core.live.router import live_context
    from voltana_cli.core.models import PerfModel, engine_spec, gpu_spec, model_spec
    from voltana_cli.core.policy import build_policy
    from voltana_cli.core.policy.feedback import TunedPolicy
    from voltana_cli.core.policy.router import LeastLoadedRouter, RandomRouter
    from voltana_cli.core.tune import tune_document, write_document

    pm = PerfModel(gpu_spec("a100-80g-sxm4"), model_spec("llama-3.1-8b"), engine_spec())
    own = TunedPolicy.default_for(tuple(pm.clocks), pm.gpu.ecofreq_levels_mhz)
    path = tmp_path / "own.yaml"
    write_document(path, tune_document(TunedPolicy(own.prefill, own.decode, prefill_router="least-loaded"),
                                       {"gpu": "a100-80g-sxm4", "model": "llama-3.1-8b", "prefill_router": "random"},
                                       {}))
    ctx = live_context(pm, 800, 50, path)
    assert isinstance(build_policy("voltana-tuned", ctx).prefill_router, LeastLoadedRouter)
    assert isinstance(build_policy("static-max", ctx).prefill_router, RandomRouter)


def test_serve_tuned_runs_voltana_tuned_in_every_sidecar(tmp_path):
    tuned = _tuned_file(tmp_path)
    r = subprocess.run([*VOLTANA, "serve", "--tuned", str(tuned), "--dry-run"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "policy voltana-tuned" in r.stdout
    sidecars = [ln for ln in r.stdout.splitlines() if "run_sidecar" in ln]
    assert len(sidecars) == 2 and all("--policy voltana-tuned " in ln and f"--tuned {tuned}" in ln for ln in sidecars)
    (tmp_path / "h100").mkdir()
    other = _tuned_file(tmp_path / "h100", gpu="h100-80g-sxm")
    r = subprocess.run([*VOLTANA, "serve", "--tuned", str(other), "--dry-run"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "is for h100-80g-sxm x llama-3.1-8b" in r.stderr and r.stderr.count("\n") == 1


def test_a_decode_request_aborted_before_its_kv_lands_frees_its_allocation():
    """The emulated engine in process: pre-allocation notifies the prefill's bootstrap server; a client that
    leaves before the KV lands leaves nothing allocated once it does."""
    import asyncio

    from voltana_cli.core.live.engine import make_engine, parse_request

    async def main() -> None:
        posts: list[tuple[str, dict]] = []

        async def post(url: str, body: dict) -> None:
            posts.append((url, body))

        eng = make_engine("decode", "a100-80g-sxm4", "llama-3.1-8b", 1, "http://decode", None, post)
        loop = asyncio.ensure_future(eng.run())
        body = {"input_ids": [1] * 100, "sampling_params": {"max_new_tokens": 5}, "bootstrap_host": "pre",
                "bootstrap_port": 9, "bootstrap_room": 7}
        job = eng.decode(parse_request("generate", body, 100_000))
        await asyncio.sleep(0.05)
        assert posts == [("http://pre:9/_voltana/allocated", {"room": 7, "decode_url": "http://decode"})]
        assert eng.inst.allocated == 1
        eng.finish_job(job, complete=False)  # the client left before its KV arrived
        assert eng.kv_arrived(7)  # it lands, and is dropped
        assert eng.inst.allocated == 0 and not eng.inst.has_work() and eng.inst.view().num_requests == 0
        loop.cancel()

    asyncio.run(main())


def test_an_emulated_decode_streams_no_token_to_a_request_it_retracted():
    """The emulated decode runs the simulator's scheduler: when its pool fills it retracts a request, which
    then gets no token until it resumes. Each client still receives exactly its output, token by token."""
    import asyncio

    from voltana_cli.core.live.engine import make_engine, parse_request

    async def main() -> None:
        async def post(url: str, body: dict) -> None:
            """The prefill's bootstrap server: not needed here."""

        eng = make_engine("decode", "a100-80g-sxm4", "llama-3.1-8b", 1, "http://decode", None, post)
        eng.inst.capacity, eng.inst.margin = 700, 8  # three 200-token prompts fill it after 33 tokens each
        loop = asyncio.ensure_future(eng.run())
        jobs = []
        for room in range(3):
            body = {"input_ids": [1] * 200, "sampling_params": {"max_new_tokens": 60}, "bootstrap_host": "pre",
                    "bootstrap_port": 9, "bootstrap_room": room}
            jobs.append(eng.decode(parse_request("generate", body, 100_000)))
        await asyncio.sleep(0.02)
        for room in range(3):
            assert eng.kv_arrived(room)

        async def count(job) -> tuple[int, float]:
            n = 0
            while await job.tokens.get() is not None:
                n += 1
            return n, eng.now()

        got = await asyncio.wait_for(asyncio.gather(*(count(j) for j in jobs)), 30)
        loop.cancel()
        assert [n for n, _ in got] == [60, 60, 60]
        assert eng.outcomes.pauses and {rid for rid, _, _ in eng.outcomes.pauses} <= {1, 2}
        # Each stream ends when the scheduler gave its last token (a streamed pause would end it that much sooner).
        for job, (_, end) in zip(jobs, got, strict=True):
            assert abs(end - eng.outcomes.finish_s[job.rid]) < 0.05

    asyncio.run(main())


def test_the_allocation_notice_lands_the_handshakes_latency_after_the_pre_allocation():
    """The emulated decode tells its prefill of a pre-allocation as a simulated one does: the engine spec's
    handshake latency later, its own trip (learnt from the previous notices' round trips) included."""
    import asyncio

    from voltana_cli.core.live.engine import make_engine, parse_request

    async def main() -> None:
        eng: Any = None
        posted: list[float] = []
        allocated: list[float] = []

        async def post(url: str, body: dict) -> None:
            posted.append(eng.now())
            await asyncio.sleep(0.010)  # a 10 ms round trip: a 5 ms one-way trip, learnt notice by notice

        eng = make_engine("decode", "a100-80g-sxm4", "llama-3.1-8b", 1, "http://decode", None, post)
        eng.model.engine = eng.model.engine.model_copy(update={"bootstrap_latency_ms": 40.0})
        told = eng.inst.on_preallocated
        eng.inst.on_preallocated = lambda rids, now: (allocated.append(now), told(rids, now))
        loop = asyncio.ensure_future(eng.run())
        for room in range(8):
            body = {"input_ids": [1] * 50, "sampling_params": {"max_new_tokens": 2}, "bootstrap_host": "pre",
                    "bootstrap_port": 9, "bootstrap_room": room}
            eng.decode(parse_request("generate", body, 100_000))
            await asyncio.sleep(0.08)
        loop.cancel()
        waits = [p - a for p, a in zip(posted, allocated, strict=True)]
        assert 0.039 <= waits[0] <= 0.050  # nothing learnt yet: sent when it is due
        assert 0.033 <= waits[-1] <= waits[0] - 0.002  # sent about the trip (5 ms) early, to land when due

    asyncio.run(main())


def test_a_prefill_keeps_early_allocation_notices_bounded_and_in_order():
    """A notice that beats its request waits for it; notices whose requests never come (aborted before the
    notice landed) do not pile up: past ``MAX_EARLY_NOTICES`` the oldest goes."""
    from voltana_cli.core.live.engine import MAX_EARLY_NOTICES, make_engine

    async def post(url: str, body: dict) -> None:
        return None

    eng = make_engine("prefill", "a100-80g-sxm4", "llama-3.1-8b", 1, "http://prefill", None, post)
    for room in range(MAX_EARLY_NOTICES + 10):
        eng.allocated(room, "http://decode")
    assert len(eng._early) == MAX_EARLY_NOTICES and min(eng._early) == 10 and MAX_EARLY_NOTICES + 9 in eng._early


def test_the_request_path_trace_gives_each_hop_per_request_across_processes(tmp_path):
    """Each process writes its own file; the client's events (no room) are matched in order to the router's,
    after the warm-up requests the router's trace begins without; each hop is the next event less this one."""
    from voltana_cli.core.live import trace

    def write(pid: int, rows: list) -> None:
        (tmp_path / f"t.{pid}").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(1, [["client_sent", None, 0.0], ["client_first_token", None, 0.5],  # warm-up: untraced elsewhere
              ["client_sent", None, 10.0], ["client_sent", None, 20.0],
              ["client_first_token", None, 10.050], ["client_first_token", None, 20.060]])
    write(2, [["router_received", 7, 10.001], ["router_first_token", 7, 10.049],
              ["router_received", 8, 20.002], ["router_first_token", 8, 20.058]])
    write(3, [["decode_received", 7, 10.002], ["decode_preallocated", 7, 10.003], ["decode_kv_arrived", 7, 10.040],
              ["decode_first_token", 7, 10.048], ["decode_received", 8, 20.003], ["decode_preallocated", 8, 20.004],
              ["decode_kv_arrived", 8, 20.050], ["decode_first_token", 8, 20.056]])
    write(4, [["prefill_released", 7, 10.004], ["prefill_released", 8, 20.006]])
    hops = trace.hops(tmp_path / "t")
    assert hops["client_sent"] == pytest.approx([1.0, 2.0])
    assert hops["decode_preallocated"] == pytest.approx([1.0, 2.0])
    assert hops["prefill_released"] == pytest.approx([36.0, 44.0])
    assert hops["router_first_token"] == pytest.approx([1.0, 2.0])
    assert set(hops) == {a for a, _ in trace.PATH[:-1]}


def test_a_dead_prefill_instance_ends_its_decode_half_with_a_502(tmp_path):
    """The decode half of a request would wait for a KV cache that never comes: the router ends it when the
    prefill half fails, and the decode instance frees what it allocated."""
    proc, url, log, ports = _serve(tmp_path)
    try:
        prefill = _engine_pids([ports[0]])
        assert len(prefill) == 1
        os.kill(prefill[0], signal.SIGKILL)
        t = time.monotonic()
        status, body = _post(f"{url}/v1/completions", b'{"prompt": [1, 2, 3], "max_tokens": 5}')
        assert time.monotonic() - t < 10
        # 502 naming the prefill; 503 only if the health probe saw it dead first (then nothing was sent at all).
        assert (status == 502 and "failed before this request's KV cache" in body["error"]["message"]) or \
            status == 503, body
        decode_url = f"http://127.0.0.1:{ports[-1]}"
        assert _wait_for(lambda: _get(f"{decode_url}/_voltana/state")[1]["requests"] == 0, 5.0)
        st = _get(f"{decode_url}/_voltana/state")[1]
        assert st["kv_tokens"] == 0 and st["preallocating"] == 0 and st["waiting"] == 0
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()


def test_kill_9_of_serve_leaves_no_process_and_no_clock_locked(tmp_path):
    """serve itself killed by SIGKILL: its engines and sidecars notice their parent is gone and stop; each sidecar
    resets its clocks on the way out, so no lock record is left."""
    proc, url, log, ports = _serve(tmp_path)
    assert len(_engine_pids(ports)) == 2
    assert _wait_for(lambda: len(_locks(tmp_path)) == 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert _wait_for(lambda: _engine_pids(ports) == [], 15.0)
    assert _wait_for(lambda: _locks(tmp_path) == {}, 15.0), _locks(tmp_path)


def test_the_router_state_gives_the_rate_the_router_counts_smoothed_as_the_simulator_does():
    """The sidecar's arrival rate: requests the router sent to its instance per second, smoothed with the
    simulator's time constant and, like the simulator's, not reading low while the smoothing fills (a plain
    mean of the readings so far at first); other instances, a router that does not answer and a garbled reply
    change nothing."""
    import math

    from voltana_cli.core.live.sidecar import RouterState, observation
    from voltana_cli.core.policy.controller import RATE_TAU_S

    docs: list = []

    def fetch() -> dict:
        d = docs.pop(0)
        if isinstance(d, Exception):
            raise d
        return d

    def cluster(mine: int, other: int) -> dict:
        return {"instances": [{"url": "http://d0", "routed": other}, {"url": "http://d1", "routed": mine}]}

    a = RouterState("http://router", "http://d1", fetch=fetch)
    docs += [cluster(0, 0), cluster(20, 500), urllib.error.URLError("down"), {"instances": "?"}, cluster(40, 9)]
    a.poll(0.0)
    assert a.rate_rps == 0.0  # the first reading only sets the origin
    a.poll(0.5)  # 20 requests in 0.5 s: 40 req/s, the only reading so far: the estimate is it
    assert a.rate_rps == pytest.approx(40.0)
    a.poll(1.0)
    a.poll(1.5)
    assert a.rate_rps == pytest.approx(40.0)  # no answer, then a garbled one: unchanged
    a.poll(2.0)  # 20 more in 1.5 s: the two readings weighted by the smoothing, over the weight filled
    w1 = 1 - math.exp(-0.5 / RATE_TAU_S)
    w2 = 1 - math.exp(-1.5 / RATE_TAU_S)
    raw = w1 * 40.0 + w2 * (20 / 1.5 - w1 * 40.0)
    filled = w1 + w2 * (1 - w1)
    assert a.rate_rps == pytest.approx(raw / filled)
    assert 20 / 1.5 < a.rate_rps < 40.0
    msg = {"scheduled_requests": {"num_decode_requests": 3, "sum_decode_kv_tokens": 90}, "wall_time": 0.01}
    assert observation(msg, "decode", 2.0, 1410, a.rate_rps).rate_rps == a.rate_rps


def test_the_router_keeps_each_prefills_pending_waits_oldest_first_and_its_latest_ttft():
    """What the forward-pass stream lacks and the simulator's prefill controller reads: the router keeps the
    requests each prefill has not answered yet, with when it placed them, and drops each at its answer."""
    from voltana_cli.core.live.router import Router

    r = Router(cluster_from_flags("sim", 1, 1), "static-max")
    p, d = r.prefills[0], r.decodes[0]
    for room, t in ((11, 10.0), (12, 10.5), (13, 11.0)):
        r.admit(p, d, 100, 10, room, now=t)
    assert p.waits(12.0) == [2.0, 1.5, 1.0] and d.pending == {}
    r.prefill_done(p, 100, 12)
    assert p.waits(12.0) == [2.0, 1.0] and p.view.num_requests == 2
    r.prefill_done(p, 100, 11)
    r.prefill_done(p, 100, 13)
    assert p.waits(12.0) == [] and p.view.num_requests == 0 and p.view.queued_tokens == 0


def test_a_prefill_sidecar_sees_the_routers_waits_and_ttft_as_the_simulators_controller_sees_them():
    """The batch's oldest wait is the oldest pending request's; the queue's oldest is the oldest of the youngest
    as many as the forward pass says are queued; both aged from the poll to the decision; the TTFT is the
    router's latest for the instance. A decode sidecar and a garbled reply get none of it."""
    from voltana_cli.core.live.sidecar import RouterState, observation

    docs = [{"instances": [{"url": "http://p0", "routed": 5, "pending": 4, "waits_s": [0.9, 0.5, 0.3, 0.1],
                            "recent_ttft_s": 0.42}]},
            {"instances": [{"url": "http://p0", "routed": 6, "waits_s": ["x"], "recent_ttft_s": "?"}]}]
    state = RouterState("http://router", "http://p0", fetch=lambda: docs.pop(0))
    state.poll(100.0)
    waits = state.waits_at(100.25)
    assert waits == pytest.approx([1.15, 0.75, 0.55, 0.35]) and state.pending == 4
    msg = {"scheduled_requests": {"num_prefill_requests": 1, "sum_prefill_tokens": 300},
           "queued_requests": {"num_prefill_requests": 2, "sum_prefill_tokens": 500}, "wall_time": 0.05}
    obs = observation(msg, "prefill", 100.25, 1410, state.rate_rps, waits, state.recent_ttft_s)
    assert obs.oldest_wait_s == pytest.approx(1.15) and obs.queued_oldest_wait_s == pytest.approx(0.55)
    assert obs.recent_ttft_s == pytest.approx(0.42) and obs.queued_tokens == 500
    # A queue longer than the router lists: the oldest queued request lies past the list, whose last wait
    # bounds it; within the list, it is found by the count in all.
    assert observation(msg, "prefill", 100.25, 1410, 0.0, waits, 0.42, 400).queued_oldest_wait_s == pytest.approx(0.35)
    assert observation(msg, "prefill", 100.25, 1410, 0.0, waits, 0.42, 5).queued_oldest_wait_s == pytest.approx(0.35)
    assert observation(msg, "prefill", 100.25, 1410, 0.0, waits, 0.42, 6).queued_oldest_wait_s == pytest.approx(0.35)
    full = {**msg, "queued_requests": {"num_prefill_requests": 3, "sum_prefill_tokens": 500}}
    assert observation(full, "prefill", 100.25, 1410, 0.0, waits, 0.42, 4).queued_oldest_wait_s == pytest.approx(0.75)
    dec = {"scheduled_requests": {"num_decode_requests": 3, "sum_decode_kv_tokens": 90}, "wall_time": 0.01}
    assert observation(dec, "decode", 100.25, 1410, 0.0, waits, 0.42).oldest_wait_s == 0.0
    state.poll(101.0)  # a garbled reply keeps the last good waits and TTFT
    assert state.waits_s == [0.9, 0.5, 0.3, 0.1] and state.recent_ttft_s == 0.42


def test_every_sidecar_is_told_where_the_router_is():
    from voltana_cli.core.live.launch import sidecar_argv

    spec = cluster_from_flags("sim", 1, 1, host="0.0.0.0", port=8123)
    argv = sidecar_argv(spec, spec.instances[0], Path("/tmp"), "voltana")
    assert argv[argv.index("--router-url") + 1] == "http://127.0.0.1:8123"


def test_a_cluster_without_slos_takes_its_models_defaults():
    """As bench and tune do: the model's SLOs (spec data) unless the cluster gives its own."""
    assert (cluster_from_flags("sim", 1, 1, model="qwen3-32b").slo_ttft_ms,
            cluster_from_flags("sim", 1, 1, model="qwen3-32b").slo_itl_ms) == (400.0, 100.0)
    assert cluster_from_flags("sim", 1, 1).slo_itl_ms == 50.0
    assert cluster_from_flags("sim", 1, 1, model="qwen3-32b", slo_ttft_ms=900).slo_ttft_ms == 900.0


def test_the_engine_schedules_iterations_against_the_models_deadlines_not_its_late_wake_ups(monkeypatch):
    """A fake clock whose every sleep oversleeps by 1.5 ms: the engine's iterations still end on the model's
    times on average (it wakes early by its measured lateness, and starts each iteration at the previous one's
    modelled end), so N iterations take N modelled durations, not N x (duration + lateness)."""
    import asyncio

    from voltana_cli.core.live import engine as E

    clock = [0.0]
    real_sleep = asyncio.sleep

    async def late_sleep(dt: float) -> None:
        clock[0] += max(dt, 0.0) + 0.0015
        await real_sleep(0)

    monkeypatch.setattr(E.asyncio, "sleep", late_sleep)

    async def main() -> None:
        async def post(url: str, body: dict) -> None:
            pass

        eng = E.make_engine("decode", "a100-80g-sxm4", "llama-3.1-8b", 1, "http://decode", None, post)
        eng.now = lambda: clock[0]
        ends: list[float] = []
        after = eng._after

        lags: list[float] = []

        def record(result, end: float):
            ends.append(end)
            lags.append(clock[0] - end)  # how far the wall clock trails the modelled end
            return after(result, end)

        eng._after = record  # type: ignore[method-assign]
        loop = asyncio.ensure_future(eng.run())
        body = {"input_ids": [1] * 100, "sampling_params": {"max_new_tokens": 200}, "bootstrap_host": "pre",
                "bootstrap_port": 9, "bootstrap_room": 7}
        modelled: list[float] = []
        eng.publish = lambda msg: modelled.append(msg["wall_time"])  # each iteration's modelled duration
        eng.decode(E.parse_request("generate", body, 100_000))
        await real_sleep(0)
        assert eng.kv_arrived(7)
        for _ in range(5000):
            await real_sleep(0)
            if len(ends) >= 150:
                break
        loop.cancel()
        # Back to back: each iteration ends its modelled duration after the previous one's modelled end (not
        # after the late wake-up that saw it end).
        assert all(abs(b - a - d) < 1e-9 for a, b, d in zip(ends, ends[1:], modelled[1:], strict=False))
        dt = (ends[-1] - ends[0]) / (len(ends) - 1)
        assert 0.005 < dt < 0.05
        # Without deadlines every iteration would start 1.5 ms after the previous one's modelled end and the lag
        # would grow by 1.5 ms an iteration (0.2 s by the end); with them it stays bounded, and once the
        # lateness is learnt the engine wakes on the modelled ends (within a tenth of an oversleep).
        assert max(lags) < 0.0016
        assert abs(sum(lags[-50:]) / 50) < 0.00015, lags[-5:]
        assert abs(eng._late_s - 0.0015) < 0.0002

    asyncio.run(main())


def test_the_engines_event_loop_rounds_epoll_timeouts_once():
    import selectors

    from voltana_cli.core.live import evloop

    sel = evloop.selector()
    if isinstance(sel, selectors.EpollSelector):
        assert isinstance(sel._selector, evloop._OnceRoundedEpoll)  # type: ignore[attr-defined]
    sel.close()

    async def answer() -> int:
        import asyncio

        await asyncio.sleep(0.001)
        return 42

    assert evloop.run(answer()) == 42
