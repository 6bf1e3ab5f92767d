"""The router's own cost: added latency and requests/s in front of instances that answer at once, side by
side with SGLang's Rust router (`sglang-router`, `--pd-disaggregation`) in front of the same instances.

    pip install sglang-router          # the reference; without it only voltana's router is measured
    python benchmarks/router_overhead.py [--requests 2000] [--concurrency 1 64]

Two instant backends (a prefill and a decode: each answers `/generate` with a fixed JSON at once) run as
processes; each router runs as its own process in front of them (`voltana serve --router-only`, the
voltana router with the predictive-ready policy registry; `python -m sglang_router.launch_router`). One
client process sends non-streamed `/generate` requests at each concurrency: first straight to the decode
backend (the floor), then through each router, in turn. Added latency = through the router minus straight,
at p50 and p99; requests/s at the highest concurrency. Issue goal: voltana's added p50 within 0.5 ms of the
Rust router's and at least 0.8x its requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from voltana_cli.core.live.launch import answers_200

_BACKEND = r'''
import json, sys
from aiohttp import web
role = sys.argv[2]
BODY = json.dumps({"text": " tok", "meta_info": {"id": "1", "prompt_tokens": 4, "completion_tokens": 1,
                                                "finish_reason": {"type": "length", "length": 1}}}).encode()
async def ok(request): return web.Response(text="")
async def info(request): return web.json_response({"model_path": "instant", "tokenizer_path": "instant",
                                                   "disaggregation_mode": role, "is_generation": True})
async def models(request): return web.json_response({"object": "list", "data": [{"id": "instant", "object": "model"}]})
async def gen(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
for p in ("/health", "/health_generate"): app.router.add_get(p, ok)
for p in ("/get_server_info", "/server_info", "/get_model_info", "/model_info"): app.router.add_get(p, info)
app.router.add_get("/v1/models", models)
app.router.add_post("/generate", gen)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen, what: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        if answers_200(url, timeout_s=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer {url}")


async def _load(url: str, n: int, concurrency: int) -> tuple[np.ndarray, float]:
    import aiohttp

    body = json.dumps({"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 1}}).encode()
    headers = {"Content-Type": "application/json"}
    lat: list[float] = []
    left = n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t = time.perf_counter()
                async with s.post(f"{url}/generate", data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"{url}: HTTP {r.status}")
                lat.append(time.perf_counter() - t)

        for _ in range(min(50, n)):  # warm connections
            async with s.post(f"{url}/generate", data=body, headers=headers) as r:
                await r.read()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return np.array(lat), n / wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="voltana-router-overhead-"))
    (tmp / "backend.py").write_text(_BACKEND)
    pre, boot, dec, vport, rport, mport = (_port() for _ in range(6))
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], log: str) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdout=open(tmp / log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        for port, role in ((pre, "prefill"), (dec, "decode")):
            p = start([sys.executable, str(tmp / "backend.py"), str(port), role], f"{role}.log")
            _wait(f"http://127.0.0.1:{port}/health", p, f"{role} backend")
        cfg = tmp / "cluster.yaml"
        cfg.write_text(json.dumps({"engine": "sim", "router": {"port": vport}, "instances": [
            {"role": "prefill", "port": pre, "bootstrap_port": boot}, {"role": "decode", "port": dec}]}))
        v = start([sys.executable, "-m", "voltana_cli", "serve", "--config", str(cfg), "--router-only"], "voltana.log")
        _wait(f"http://127.0.0.1:{vport}/health", v, "voltana router")
        targets = {"direct": f"http://127.0.0.1:{dec}", "voltana": f"http://127.0.0.1:{vport}"}
        try:
            import sglang_router  # noqa: F401

            r = start([sys.executable, "-m", "sglang_router.launch_router", "--pd-disaggregation", "--prefill",
                       f"http://127.0.0.1:{pre}", str(boot), "--decode", f"http://127.0.0.1:{dec}", "--host",
                       "127.0.0.1", "--port", str(rport), "--policy", "random", "--prometheus-port", str(mport)],
                      "rust.log")
            _wait(f"http://127.0.0.1:{rport}/health", r, "sglang-router")
            targets["sglang-router"] = f"http://127.0.0.1:{rport}"
        except ImportError:
            print("sglang-router is not installed (pip install sglang-router): measuring voltana's router alone")
        print(f"{a.requests} non-streamed /generate requests per run; instant prefill and decode backends; "
              f"{os.cpu_count()} CPUs shared by backends, routers and the client")
        print(f"{'target':14} {'conc':>5} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10} {'req/s':>8}")
        res: dict[tuple[str, int], tuple[float, float, float]] = {}
        for c in a.concurrency:
            for name, url in targets.items():
                lat, rps = asyncio.run(_load(url, a.requests, c))
                p50, p99 = np.percentile(lat, [50, 99]) * 1e3
                res[(name, c)] = (p50, p99, rps)
                base = res[("direct", c)]
                added = "" if name == "direct" else f"{p50 - base[0]:10.3f} {p99 - base[1]:10.3f}"
                print(f"{name:14} {c:5d} {p50:8.3f} {p99:8.3f} {added:>21} {rps:8.0f}")
        if "sglang-router" in targets:
            c1, cmax = min(a.concurrency), max(a.concurrency)
            va = res[("voltana", c1)][0] - res[("direct", c1)][0]
            ra = res[("sglang-router", c1)][0] - res[("direct", c1)][0]
            ratio = res[("voltana", cmax)][2] / res[("sglang-router", cmax)][2]
            print(f"added p50 at concurrency {c1}: voltana {va:.3f} ms, sglang-router {ra:.3f} ms (goal: within 0.5 ms: "
                  f"{'ok' if va - ra <= 0.5 else 'MISS'}); requests/s at {cmax}: voltana/sglang-router {ratio:.2f} "
                  f"(goal >= 0.8: {'ok' if ratio >= 0.8 else 'MISS'})")
    finally:
        for p in procs:
            if p.poll() is not None:
                continue
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
