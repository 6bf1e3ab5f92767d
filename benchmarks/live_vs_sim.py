"""Simulated bench vs live emulated bench: the same workload and policy, side by side.

Starts `voltana serve --engine sim` (1 prefill + 1 decode emulated engines behind the router), replays the
workload with `voltana bench --url`, runs the simulated bench on the same workload, seed, cluster shape
and clocks (noise 0: the emulated engines have none), and prints TTFT and ITL p50/p90, attainment, energy
and the decode instance's busy share of both. The goal (issue "voltana serve"): TTFT and ITL p50/p90
within 10 %, attainment within 2 points, energy within 10 %, at a rate that keeps the decode instance at
least half busy. Then the live request path, hop by hop (p50 over the run's requests, from the trace every
live process writes under ``VOLTANA_TRACE``), and its transport (ingress, the handshake's notice, egress)
next to what the engine spec models: the simulated run counts that path, the live one travels it.

    python benchmarks/live_vs_sim.py                        # 4 req/s, 30 s, static-max
    python benchmarks/live_vs_sim.py --rate 6 --duration-s 60 --policy static:1200/990
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from voltana_cli.core.live import trace
from voltana_cli.core.live.launch import answers_200
from voltana_cli.core.models import engine_spec

VOLTANA = [sys.executable, "-m", "voltana_cli"]


def _free_port() -> int:  # an ephemeral port: answers_200 tells a connection that reached itself from a server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--duration-s", type=float, default=30.0)
    ap.add_argument("--policy", default="static-max")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="voltana-live-vs-sim-"))
    ports = [_free_port() for _ in range(4)]
    cfg = tmp / "cluster.yaml"
    cfg.write_text(json.dumps({"engine": "sim", "router": {"port": ports[3]}, "instances": [
        {"role": "prefill", "port": ports[0], "bootstrap_port": ports[1]}, {"role": "decode", "port": ports[2]}]}))
    url = f"http://127.0.0.1:{ports[3]}"
    env = {**os.environ, "VOLTANA_TRACE": str(tmp / "trace")}  # every live process stamps its P/D events
    serve = subprocess.Popen([*VOLTANA, "serve", "--config", str(cfg), "--admin-token", "bench"], env=env,
                             stdout=open(tmp / "serve.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(300):
            if answers_200(f"{url}/health", timeout_s=1):
                break
            time.sleep(0.2)
        common = ["--request-rate", str(a.rate), "--duration-s", str(a.duration_s), "--seed", str(a.seed),
                  "--policy", a.policy]
        live, sim = tmp / "live.json", tmp / "sim.json"
        subprocess.run([*VOLTANA, "bench", "--url", url, "--admin-token", "bench", *common, "--json", str(live)],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        with urllib.request.urlopen(f"{url}/cluster") as r:
            cluster = json.loads(r.read())
        subprocess.run([*VOLTANA, "bench", "--prefill", "1", "--decode", "1", "--noise", "0", *common,
                        "--json", str(sim)], check=True, stdout=subprocess.DEVNULL)
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        serve.wait(30)
    lr, sr = json.loads(live.read_text())["runs"][0], json.loads(sim.read_text())["runs"][0]
    busy = {i["role"]: i["busy_s"] / sr["duration_s"] for i in sr["instances"]}
    print(f"{a.policy} at {a.rate:g} req/s for {a.duration_s:g} s, seed {a.seed}; 1P1D {cluster['gpu']} x "
          f"{cluster['model']}; simulated decode busy share {100 * busy['decode']:.0f} %")
    print(f"{'figure':24} {'simulated':>12} {'live':>12} {'live/sim':>9}  goal")
    ok = True
    rows = [("TTFT p50 ms", sr["ttft_ms"]["p50"], lr["ttft_ms"]["p50"], 0.10),
            ("TTFT p90 ms", sr["ttft_ms"]["p90"], lr["ttft_ms"]["p90"], 0.10),
            ("ITL p50 ms", sr["itl_ms"]["p50"], lr["itl_ms"]["p50"], 0.10),
            ("ITL p90 ms", sr["itl_ms"]["p90"], lr["itl_ms"]["p90"], 0.10),
            ("energy J", sr["energy_j"]["total"], lr["energy_j"]["total"], 0.10)]
    for name, s, v, tol in rows:
        good = abs(v / s - 1) <= tol
        ok &= good
        print(f"{name:24} {s:12.1f} {v:12.1f} {v / s:9.3f}  within {100 * tol:.0f} %: {'ok' if good else 'MISS'}")
    for k in ("ttft", "itl", "both"):
        s, v = 100 * sr["attainment"][k], 100 * lr["attainment"][k]
        good = abs(v - s) <= 2
        ok &= good
        print(f"{k + ' attainment %':24} {s:12.1f} {v:12.1f} {v - s:+9.1f}  within 2 pt: {'ok' if good else 'MISS'}")
    print(f"requests: simulated {sr['num_requests']}, live {lr['num_requests']} ({lr['failed_requests']} failed)")
    _print_path(tmp / "trace")
    return 0 if ok else 1


def _print_path(prefix: Path) -> None:
    """The live stack's request path, hop by hop (p50 over the run's requests, from each process's trace),
    and its transport (ingress, the handshake's notice, egress) next to what the engine spec models."""
    e = engine_spec("sglang")  # the emulated engines' and the simulated bench's
    hops = trace.hops(prefix)
    print("\nthe live request path, p50 per hop (ms):")
    for a, what in trace.PATH[:-1]:
        print(f"  {what:48} {trace.median(hops[a]):7.2f}{'  (transport)' if a in trace.TRANSPORT else ''}")

    def summed(*names: str) -> float:
        return trace.median([sum(x) for x in zip(*(hops[n] for n in names), strict=True)])

    print(f"  transport, live / modelled: ingress {summed('client_sent', 'router_received'):.2f} / "
          f"{e.request_ingress_ms:.2f}, handshake {summed('decode_preallocated'):.2f} / {e.bootstrap_latency_ms:.2f}, "
          f"egress {summed('decode_first_token', 'router_first_token'):.2f} / {e.token_egress_ms:.2f}")


if __name__ == "__main__":
    sys.exit(main())
