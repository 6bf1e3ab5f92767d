"""An emulated SGLang server for tests: the real HTTP endpoints the sglang profile backend uses
(`GET /server_info`, streaming `POST /generate`), in front of a continuous-batching engine whose iteration
times are set by the test. Loopback only, stops when the test ends."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class _Req:
    prompt: int
    max_new: int
    out: queue.Queue = field(default_factory=queue.Queue)
    done: int = 0


class FakeSglang:
    def __init__(self, decode_ms: Callable[[int, int], float], prefill_ms: Callable[[int], float]):
        self.decode_ms, self.prefill_ms = decode_ms, prefill_ms
        self.cond = threading.Condition()
        self.waiting: list[_Req] = []
        self.running: list[_Req] = []
        self.stop = threading.Event()
        self.batches: list[int] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/server_info":
                    self.send_error(404)
                    return
                body = json.dumps({"version": "0.5.23-fake", "model_path": "fake/llama", "tp_size": 1}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                r = _Req(len(req["input_ids"]), int(req["sampling_params"]["max_new_tokens"]))
                with fake.cond:
                    fake.waiting.append(r)
                    fake.cond.notify()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                while True:
                    n = r.out.get()
                    if n is None:
                        break
                    msg = {"text": "x" * n, "meta_info": {"prompt_tokens": r.prompt, "completion_tokens": n}}
                    self.wfile.write(f"data: {json.dumps(msg)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                         threading.Thread(target=self._engine, daemon=True)]
        for t in self._threads:
            t.start()

    def _emit(self, reqs: list[_Req]) -> None:
        for r in reqs:
            r.done += 1
            r.out.put(r.done)
            if r.done >= r.max_new:
                r.out.put(None)

    def _engine(self) -> None:
        while not self.stop.is_set():
            with self.cond:
                if not self.waiting and not self.running:
                    self.cond.wait(0.05)
                new, self.waiting = self.waiting, []
            if new:  # prefill first, like SGLang
                time.sleep(self.prefill_ms(sum(r.prompt for r in new)) / 1e3)
                self._emit(new)
                self.running += [r for r in new if r.done < r.max_new]
            elif self.running:
                kv = sum(r.prompt + r.done for r in self.running)
                self.batches.append(len(self.running))
                time.sleep(self.decode_ms(len(self.running), kv) / 1e3)
                self._emit(self.running)
                self.running = [r for r in self.running if r.done < r.max_new]

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
