"""Clock control without root: through the Zeus daemon (``zeusd``, from the Zeus project), which runs as root
and takes clock requests from unprivileged processes over a Unix socket.

``ZeusdGpu`` is a ``GpuDevice`` whose two setters go to the daemon's HTTP API and whose readers (clocks,
energy, power, identity: no privilege needed) go to NVML:

- ``POST /gpu/<index>/set_gpu_locked_clocks`` with ``{"min_clock_mhz", "max_clock_mhz", "block": true}``;
- ``POST /gpu/<index>/reset_gpu_locked_clocks`` with ``{"block": true}``.

``block`` makes the daemon answer once the clock is set, so a ``ClockGuard`` knows the lock holds. The
daemon's socket is ``ZEUSD_SOCK_PATH`` (the variable Zeus's own client reads), unless a path is given.

Decision: voltana speaks the daemon's HTTP API itself rather than through the ``zeus`` package's GPU
classes, because those initialise NVML for every call path and cannot be exercised without a GPU; the two
requests above are the whole of what a controller needs, and a fake daemon tests them here.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware.device import GpuDevice

#: The environment variable naming the daemon's socket.
SOCKET_ENV = "ZEUSD_SOCK_PATH"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("zeusd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def zeusd_socket(given: str | None = None) -> str:
    """The daemon's socket: ``given``, else ``$ZEUSD_SOCK_PATH``; a ``UserError`` when neither names a socket."""
    path = given or os.environ.get(SOCKET_ENV)
    if not path:
        raise UserError(f"clock control through zeusd needs its socket: set {SOCKET_ENV} or give the path "
                        "(start the daemon as root: zeusd --socket-path PATH)", field="zeusd_socket")
    if not os.path.exists(path):
        raise UserError(f"no zeusd socket at {path}: start the daemon (as root) or fix the path",
                        field="zeusd_socket")
    return path


class ZeusdGpu:
    """One GPU whose clocks the Zeus daemon sets (see the module docstring).

    Args:
        index: the GPU's index as the daemon numbers them (NVML's).
        reader: the same GPU for reading (an ``NvmlGpu``, or a stand-in in tests); its ``uid`` keys the lock
            records.
        path: the daemon's socket.
        timeout_s: per request.
    """

    def __init__(self, index: int, reader: GpuDevice, path: str, timeout_s: float = 10.0):
        self.index = index
        self._reader = reader
        self._path = path
        self._timeout = timeout_s
        self.name = reader.name
        self.uid = reader.uid

    def _post(self, route: str, body: dict[str, Any]) -> None:
        conn = _UnixConnection(self._path, self._timeout)
        try:
            conn.request("POST", f"/gpu/{self.index}/{route}", body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace").strip()
        except OSError as exc:
            raise RuntimeError(f"zeusd at {self._path} did not answer {route}: {exc}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"zeusd refused {route} on GPU {self.index}: HTTP {resp.status} {text[:200]}")

    def lock_clocks(self, min_mhz: int, max_mhz: int) -> None:
        self._post("set_gpu_locked_clocks", {"min_clock_mhz": int(min_mhz), "max_clock_mhz": int(max_mhz),
                                             "block": True})

    def reset_clocks(self) -> None:
        self._post("reset_gpu_locked_clocks", {"block": True})

    def supported_clocks_mhz(self) -> list[int]:
        return self._reader.supported_clocks_mhz()

    def sm_clock_mhz(self) -> int:
        return self._reader.sm_clock_mhz()

    def energy_j(self) -> float | None:
        return self._reader.energy_j()

    def power_w(self) -> float | None:
        return self._reader.power_w()

    def identity(self) -> dict[str, Any]:
        return {**self._reader.identity(), "clock_control": f"zeusd at {self._path}"}
