"""Clock locks that outlive their owner: a durable record before the lock, a reset by the next guard when
the owner died (even by SIGKILL), a refusal while the owner lives. The GPU is a test fake whose lock state
sits in a file, like a real card's clocks that stay locked when the process that locked them dies."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes import RecordingGpu
from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import ClockGuard, LockStore
from voltana_cli.core.hardware.locks import owner_alive, process_start
from voltana_cli.core.models.specs import gpu_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = gpu_spec("a100-80g-sxm4")

# A voltana-like process: lock the fake card at 1005 MHz through a recorded guard, say so, then wait to be killed.
HOLDER = """
import sys, time
from tests.fakes import RecordingGpu
from voltana_cli.core.hardware import ClockGuard, LockStore
from voltana_cli.core.models.specs import gpu_spec
gpu = RecordingGpu(gpu_spec("a100-80g-sxm4"), state_file=sys.argv[1], resume=True, uid="GPU-test-0")
with ClockGuard([gpu], store=LockStore(sys.argv[2])) as g:
    g.set(1005)
    print("locked", flush=True)
    time.sleep(60)
"""


def card(state: Path) -> RecordingGpu:
    return RecordingGpu(SPEC, state_file=state, resume=True, uid="GPU-test-0")


def start_holder(state: Path, locks: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state), str(locks)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked", proc.stderr.read() if proc.stderr else ""
    return proc


def test_a_lock_is_recorded_durably_before_it_is_taken_and_forgotten_after_the_reset(tmp_path):
    store = LockStore(tmp_path / "locks")
    seen = []

    class Watching(RecordingGpu):
        def lock_clocks(self, lo, hi):
            seen.append(store.read(self.uid))  # what a kill -9 at this instant would leave behind
            super().lock_clocks(lo, hi)

    gpu = Watching(SPEC, uid="GPU-test-0")
    with ClockGuard([gpu], store=store) as g:
        g.set(1005)
        g.set(1110)
    rec = seen[0]
    assert rec is not None and rec.clock_mhz == 1005 and rec.pid == os.getpid() and rec.gpu_name == gpu.name
    assert rec.pid_start == process_start(os.getpid()) and seen[1] == rec  # a later change keeps the first record
    assert store.read(gpu.uid) is None and gpu.locked is None
    assert [p.name for p in (tmp_path / "locks").iterdir()] == []  # no temporary left either


def test_after_a_sigkill_the_next_guard_resets_the_clocks_and_says_so(tmp_path):
    state, locks = tmp_path / "gpu.json", tmp_path / "locks"
    proc = start_holder(state, locks)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert json.loads(state.read_text())["locked"] == [1005, 1005]  # nothing ran: the card stays locked
    gpu, notes = card(state), []
    with ClockGuard([gpu], lock=False, store=LockStore(locks), on_notice=notes.append):
        assert gpu.locked is None  # reset before the new run does anything, even one that does not lock
    assert json.loads(state.read_text())["locked"] is None
    assert len(notes) == 1 and f"pid {proc.pid}" in notes[0] and "1005 MHz" in notes[0] and "reset" in notes[0]
    assert LockStore(locks).read(gpu.uid) is None


def test_a_lock_whose_owner_lives_is_left_alone_and_the_new_guard_is_refused(tmp_path):
    state, locks = tmp_path / "gpu.json", tmp_path / "locks"
    proc = start_holder(state, locks)
    try:
        gpu = card(state)
        with pytest.raises(UserError, match=rf"held by voltana pid {proc.pid} .*stop that process first"):
            with ClockGuard([gpu], store=LockStore(locks)) as g:
                g.set(1410)
        assert gpu.lock_calls == [] and json.loads(state.read_text())["locked"] == [1005, 1005]
        assert LockStore(locks).read(gpu.uid) is not None
    finally:
        proc.send_signal(signal.SIGTERM)  # the holder's own guard resets the card on SIGTERM
        proc.wait(timeout=10)
    assert json.loads(state.read_text())["locked"] is None and LockStore(locks).read("GPU-test-0") is None


def test_a_reused_pid_is_not_the_owner(tmp_path):
    store = LockStore(tmp_path)
    rec = store.record("GPU-x", "x", 1005)
    assert owner_alive(rec)
    assert not owner_alive(rec.__class__(**{**rec.__dict__, "pid_start": "1"}))  # same pid, another start time
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    time.sleep(0.05)
    assert not owner_alive(rec.__class__(**{**rec.__dict__, "pid": int(dead.stdout)}))


def test_a_damaged_record_is_one_line_naming_the_file(tmp_path):
    store = LockStore(tmp_path)
    (tmp_path / "GPU-x.json").write_bytes(b"\x00\xff garbage")
    with pytest.raises(UserError, match=r"GPU-x\.json: not a voltana clock-lock record .*delete the file"):
        store.read("GPU-x")
