"""SGLang's forward-pass metrics stream (0.5.19+, ``--enable-forward-pass-metrics``), both ends.

One message per forward pass on a ZMQ PUB socket ``<ipc name>.<dp_rank>``: frames ``(topic b"", 8-byte
big-endian sequence, msgpack map)``; the map holds ``wall_time`` (seconds of that forward pass) and the
``scheduled_requests`` and ``queued_requests`` counts (``../shared/SGLANG.md``). An idle server sends a
zero heartbeat every second. ``ForwardPassPublisher`` is the emulated engine's end (so that a sidecar reads
emulated and real instances through one code path); ``ForwardPassReader`` is the sidecar's.
"""

from __future__ import annotations

from typing import Any


def socket_path(ipc_name: str, dp_rank: int = 0) -> str:
    """The PUB socket of ``ipc_name`` for one data-parallel rank (SGLang appends ``.<dp_rank>``)."""
    return f"{ipc_name}.{dp_rank}"


class ForwardPassPublisher:
    """Publishes forward-pass messages (never blocks: a message no subscriber takes is dropped)."""

    def __init__(self, ipc_name: str):
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(socket_path(ipc_name))
        self._seq = 0

    def send(self, message: dict[str, Any]) -> None:
        import msgpack

        self._seq += 1
        try:
            self._sock.send_multipart([b"", self._seq.to_bytes(8, "big"), msgpack.packb(message)],
                                      flags=self._zmq.NOBLOCK)
        except self._zmq.Again:
            pass

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()


class ForwardPassReader:
    """Reads forward-pass messages; ``read(timeout_s)`` returns the next one, or ``None`` on timeout."""

    def __init__(self, ipc_name: str):
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(socket_path(ipc_name))
        self.last_seq = 0
        self.dropped = 0

    def read(self, timeout_s: float) -> dict[str, Any] | None:
        import msgpack

        if not self._sock.poll(int(timeout_s * 1000)):
            return None
        frames = self._sock.recv_multipart()
        if len(frames) != 3:
            return None
        seq = int.from_bytes(frames[1], "big")
        if self.last_seq and seq > self.last_seq + 1:
            self.dropped += seq - self.last_seq - 1
        self.last_seq = seq
        msg = msgpack.unpackb(frames[2])
        return msg if isinstance(msg, dict) else None

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()
