"""Clock control without root through the Zeus daemon, against a fake daemon that speaks zeusd's HTTP API on a
Unix socket (the real one is a root binary CI cannot install)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import ClockGuard, LockStore, ZeusdGpu, zeusd_socket


class Reader:
    """The NVML side of the GPU (reads need no privilege): a stand-in."""

    name, uid = "NVIDIA H100 80GB HBM3", "GPU-fake-1"

    def supported_clocks_mhz(self) -> list[int]:
        return [345, 990, 1980]

    def sm_clock_mhz(self) -> int:
        return 1980

    def energy_j(self) -> float | None:
        return 12.5

    def power_w(self) -> float | None:
        return 70.0

    def identity(self) -> dict:
        return {"gpu_name": self.name}

    def lock_clocks(self, lo: int, hi: int) -> None:
        raise AssertionError("a ZeusdGpu never sets clocks through NVML")

    def reset_clocks(self) -> None:
        raise AssertionError("a ZeusdGpu never resets clocks through NVML")


@pytest.fixture
def daemon(tmp_path: Path):
    """A fake zeusd on a Unix socket: records each request; GPU 7 does not exist (400, as zeusd answers)."""
    from aiohttp import web

    calls: list[tuple[str, dict]] = []
    sock = tmp_path / "zeusd.sock"
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append((request.path, body))
        if request.match_info["gpu"] == "7":
            return web.Response(status=400, text="GPU 7 not found")
        return web.Response()

    async def start() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/gpu/{gpu}/set_gpu_locked_clocks", handle)
        app.router.add_post("/gpu/{gpu}/reset_gpu_locked_clocks", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        return runner

    def serve() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()  # closed here, in its thread: left to the garbage collector it warns at exit

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ready.wait(10)
    yield sock, calls
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def test_clocks_are_locked_and_reset_through_the_daemon(daemon, tmp_path):
    sock, calls = daemon
    gpu = ZeusdGpu(0, Reader(), str(sock))
    store = LockStore(tmp_path / "locks")
    with ClockGuard([gpu], store=store) as guard:
        guard.set(990)
        assert store.read(gpu.uid) is not None  # recorded like any other lock
    assert calls == [("/gpu/0/set_gpu_locked_clocks", {"min_clock_mhz": 990, "max_clock_mhz": 990, "block": True}),
                     ("/gpu/0/reset_gpu_locked_clocks", {"block": True})]
    assert store.read(gpu.uid) is None
    assert gpu.sm_clock_mhz() == 1980 and gpu.energy_j() == 12.5  # reads go to NVML
    assert "zeusd at" in gpu.identity()["clock_control"]


def test_a_refusal_or_a_missing_daemon_is_said(daemon, tmp_path, monkeypatch):
    sock, _ = daemon
    with pytest.raises(RuntimeError, match="zeusd refused set_gpu_locked_clocks on GPU 7: HTTP 400 GPU 7 not found"):
        ZeusdGpu(7, Reader(), str(sock)).lock_clocks(990, 990)
    with pytest.raises(RuntimeError, match="did not answer"):
        ZeusdGpu(0, Reader(), str(tmp_path / "nothing.sock")).lock_clocks(990, 990)
    monkeypatch.delenv("ZEUSD_SOCK_PATH", raising=False)
    with pytest.raises(UserError, match="set ZEUSD_SOCK_PATH"):
        zeusd_socket(None)
    with pytest.raises(UserError, match="no zeusd socket at"):
        zeusd_socket(str(tmp_path / "nothing.sock"))
    monkeypatch.setenv("ZEUSD_SOCK_PATH", str(sock))
    assert zeusd_socket(None) == str(sock)


def test_serve_says_which_clock_path_it_uses(tmp_path):
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"engine": "sglang", "gpu_access": "zeusd", "zeusd_socket": "/run/zeusd.sock",
                                   "instances": [{"role": "prefill", "port": 30000, "bootstrap_port": 8998,
                                                  "gpu_ids": [0]}, {"role": "decode", "port": 30001,
                                                                    "gpu_ids": [1]}]}))
    r = subprocess.run([sys.executable, "-m", "voltana_cli", "serve", "--config", str(cfg), "--dry-run"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "clocks through the Zeus daemon at /run/zeusd.sock (no root needed)" in r.stdout
    assert r.stdout.count("--gpu-kind zeusd") == 2 and "--zeusd-socket /run/zeusd.sock" in r.stdout
