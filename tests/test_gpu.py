"""GPU access without NVML: the clock guard, the emulated GPU, device visibility, the timing protocol and
the clocks a measuring backend profiles. (The NVML adapter is tested in test_nvml.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from tests.fakes import RecordingGpu
from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import ClockGuard, EmulatedGpu, visible_device
from voltana_cli.core.models.specs import gpu_spec
from voltana_cli.core.profiling import ProfileRequest, run_profile
from voltana_cli.core.profiling.measured import gpu_clocks, gpu_key_for
from voltana_cli.core.profiling.timing import Timer

ROOT = Path(__file__).resolve().parents[1]


def recording():
    return RecordingGpu(gpu_spec("a100-80g-sxm4"))


def test_cuda_visible_devices_mapping():
    assert visible_device(1, "3,5") == ("index", 5)
    assert visible_device(0, "GPU-abc") == ("uuid", "GPU-abc")
    assert visible_device(2, None) == ("index", 2)
    with pytest.raises(UserError, match="exposes 2 device"):
        visible_device(2, "0,1")


def test_emulated_gpu_locks_only_supported_clocks_and_integrates_energy():
    t = [0.0]
    g = EmulatedGpu(gpu_spec("a100-80g-sxm4"), clock=lambda: t[0], idle_power=lambda f: f / 10)
    assert g.sm_clock_mhz() == 1410  # unlocked: boosting to the top
    t[0] = 1.0
    g.lock_clocks(1005, 1005)
    t[0] = 3.0
    assert g.energy_j() == pytest.approx(141.0 + 2 * 100.5)  # 1 s at 1410 MHz, then 2 s at 1005 MHz
    with pytest.raises(UserError) as e:
        g.lock_clocks(1007, 1007)
    assert e.value.field == "clocks_mhz" and g.locked == (1005, 1005)
    g.reset_clocks()
    assert g.locked is None and g.sm_clock_mhz() == 1410


def test_guard_restores_on_exception_and_on_partial_failure():
    a, b = recording(), recording()
    with pytest.raises(RuntimeError), ClockGuard([a, b]) as g:
        g.set(1005)
        assert a.locked == (1005, 1005) and b.locked == (1005, 1005)
        raise RuntimeError("boom")
    assert a.locked is None and b.locked is None
    # A GPU whose lock call fails half-way is reset too.
    c = recording()
    c.lock_clocks = mock.Mock(side_effect=UserError("refused"))
    with pytest.raises(UserError), ClockGuard([a, c]) as g:
        g.set(1005)
    assert a.locked is None and c.lock_calls == [None]


def test_guard_reports_a_failed_reset_and_still_resets_the_others():
    a, b = recording(), recording()
    a.reset_clocks = mock.Mock(side_effect=RuntimeError("driver gone"))
    told: list[str] = []
    with ClockGuard([a, b], on_reset_error=told.append) as g:
        g.set(1005)
    assert b.locked is None and b.lock_calls[-1] is None
    assert len(told) == 1 and "driver gone" in told[0] and "nvidia-smi -rgc" in told[0]
    assert g.reset_errors == told


def test_guard_without_locking_touches_nothing():
    a = recording()
    with ClockGuard([a], lock=False) as g:
        g.set(1005)
    assert a.lock_calls == []


def test_guard_restores_on_sigterm_and_ctrl_c():
    a = recording()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e, ClockGuard([a]) as g:
        assert signal.getsignal(signal.SIGTERM) is not before  # the guard's handler is in place
        g.set(1005)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises inside this sleep
    assert e.value.code == 128 + signal.SIGTERM
    assert a.locked is None
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
    with pytest.raises(KeyboardInterrupt), ClockGuard([a]) as g:
        g.set(1200)
        raise KeyboardInterrupt
    assert a.locked is None
    assert a.lock_calls == [(1005, 1005), None, (1200, 1200), None]


def test_the_sim_backend_locks_each_clock_on_the_gpu_it_is_given():
    g = recording()
    req = ProfileRequest(clocks_mhz=[1005, 1410], batch_sizes=[1], prefill_tokens=[64], prefill_seqs=[1], repeats=1)
    prof = run_profile(req, gpu=g)
    assert g.lock_calls == [(1005, 1005), (1410, 1410), None]  # each clock in turn, then reset
    assert prof.clocks_mhz == [1005, 1410] and prof.meta.clocks_locked
    with pytest.raises(ValueError, match="sim backend"):
        run_profile(ProfileRequest(backend="torch"), gpu=g)
    assert g.lock_calls[-1] is None


@pytest.mark.parametrize("sig, code", [
    (signal.SIGTERM, 128 + signal.SIGTERM),
    (signal.SIGHUP, 128 + signal.SIGHUP),
    (signal.SIGINT, 130),
])
def test_a_profile_run_restores_clocks_when_stopped_by_a_signal(tmp_path, sig, code):
    """A real process, a real signal: the GPU's lock state (mirrored to a file by the fake) ends reset."""
    state, out = tmp_path / "gpu.json", tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "tests.profile_driver", str(state), str(out), "0.05"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["locked"] is not None:
            break
        if proc.poll() is not None:
            pytest.fail(f"the driver ended before locking a clock: {proc.communicate()[1]}")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the profile never locked a clock")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    final = json.loads(state.read_text())
    assert final["locked"] is None and final["calls"] >= 2
    assert "Traceback" not in err
    assert not (out / "profile.csv").exists()  # nothing half-written


def test_the_driver_writes_the_profile_when_left_alone(tmp_path):
    """The signal test's control: unsignalled, the same run ends with clocks reset and a profile."""
    state, out = tmp_path / "gpu.json", tmp_path / "p"
    done = subprocess.run([sys.executable, "-m", "tests.profile_driver", str(state), str(out), "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    final = json.loads(state.read_text())
    assert final["locked"] is None and final["calls"] == 3  # lock 1005, lock 1410, reset
    assert (out / "profile.csv").exists()


def test_timer_repeats_until_the_window_is_long_enough_and_reports_energy_per_call():
    clock = [0.0]
    a = EmulatedGpu(gpu_spec("a100-80g-sxm4"), clock=lambda: clock[0], idle_power=lambda f: 100.0)
    calls = []

    def work():
        calls.append(1)
        clock[0] += 0.03  # 30 ms per call at 100 W: 3 J per call

    w = Timer(gpus=[a], min_window_s=0.1, warmup=2, now=lambda: clock[0]).window(work)
    assert w.calls == 4 and len(calls) == 6  # warm-up calls are not timed
    assert w.latency_s == pytest.approx(0.03) and w.energy_j == pytest.approx(3.0)
    assert w.clock_mhz == 1410
    no_counter = Timer(gpus=[], min_window_s=0.0, warmup=0, now=lambda: clock[0]).window(work)
    assert no_counter.calls == 1 and no_counter.energy_j is None


def test_real_gpu_clock_choice():
    g = recording()
    ident = g.identity()
    assert gpu_clocks(ProfileRequest(), g, ident) == [1410]  # unlocked: the clock the card runs at
    with pytest.raises(UserError, match="several clocks need lock_clocks") as e:
        gpu_clocks(ProfileRequest(clocks_mhz=[1005, 1410]), g, ident)
    assert e.value.field == "clocks_mhz"
    assert gpu_clocks(ProfileRequest(clocks_mhz=[1005, 1410], lock_clocks=True), g, ident) == [1005, 1410]
    with pytest.raises(UserError, match="1007 MHz: this GPU supports 210-1410 MHz") as e:
        gpu_clocks(ProfileRequest(clocks_mhz=[1007], lock_clocks=True), g, ident)
    assert e.value.field == "clocks_mhz"
    assert g.lock_calls == []  # choosing clocks locks nothing


@pytest.mark.parametrize("name, key", [
    ("NVIDIA A100-SXM4-80GB", "a100-80g-sxm4"),
    ("NVIDIA H100 80GB HBM3", "h100-80g-sxm"),
    ("NVIDIA H100 SXM5 80GB", "h100-80g-sxm"),
    ("NVIDIA H200", "h200-141g-sxm"),
    ("NVIDIA A100 80GB PCIe", "nvidia-a100-80gb-pcie"),
    ("NVIDIA A100-SXM4-40GB", "nvidia-a100-sxm4-40gb"),
])
def test_device_names_map_to_spec_keys_or_a_slug(name, key):
    assert gpu_key_for(name) == key
