import os
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware.gpu import ClockGuard, EmulatedGpu, NvmlGpu, visible_device
from voltana_cli.core.models.specs import gpu_spec

pynvml = pytest.importorskip("pynvml")


def fake_nvml():
    """An autospec'd pynvml: every call must match the real signature. Errors and constants are the real ones."""
    nv = mock.create_autospec(pynvml, spec_set=False, instance=False)
    nv.NVMLError = pynvml.NVMLError
    for name in ("NVML_ERROR_NO_PERMISSION", "NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_DRIVER_NOT_LOADED",
                 "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_CLOCK_SM"):
        setattr(nv, name, getattr(pynvml, name))
    nv.nvmlDeviceGetHandleByIndex.return_value = "h0"
    nv.nvmlDeviceGetName.return_value = "NVIDIA H100 80GB HBM3"
    return nv


def test_lock_reset_and_clock_reads(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nv = fake_nvml()
    nv.nvmlDeviceGetSupportedMemoryClocks.return_value = [2619, 1593]
    nv.nvmlDeviceGetSupportedGraphicsClocks.return_value = [1980, 345, 1005, 1005]
    nv.nvmlDeviceGetClockInfo.return_value = 1755
    g = NvmlGpu(0, nvml=nv)
    assert g.name == "NVIDIA H100 80GB HBM3"
    g.lock_clocks(1005, 1005)
    nv.nvmlDeviceSetGpuLockedClocks.assert_called_once_with("h0", 1005, 1005)
    g.reset_clocks()
    nv.nvmlDeviceResetGpuLockedClocks.assert_called_once_with("h0")
    assert g.supported_clocks_mhz() == [345, 1005, 1980]
    nv.nvmlDeviceGetSupportedGraphicsClocks.assert_called_with("h0", 2619)
    assert g.sm_clock_mhz() == 1755
    nv.nvmlDeviceGetClockInfo.assert_called_with("h0", pynvml.NVML_CLOCK_SM)


def test_energy_is_joules_from_the_64_bit_millijoule_counter():
    nv = fake_nvml()
    nv.nvmlDeviceGetTotalEnergyConsumption.return_value = 2**32 + 1234  # past a 32-bit wrap
    nv.nvmlDeviceGetPowerUsage.return_value = 312_500
    g = NvmlGpu(0, nvml=nv)
    e = g.energy_j()
    assert isinstance(e, float) and e == pytest.approx((2**32 + 1234) / 1000.0)
    assert g.power_w() == pytest.approx(312.5)
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert g.energy_j() is None  # unavailable, never 0


def test_permission_error_is_one_actionable_line():
    nv = fake_nvml()
    nv.nvmlDeviceSetGpuLockedClocks.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    g = NvmlGpu(0, nvml=nv)
    with pytest.raises(UserError) as e:
        g.lock_clocks(1410, 1410)
    msg = str(e.value)
    assert "CAP_SYS_ADMIN" in msg and "--no-lock-clocks" in msg and "\n" not in msg


def test_cuda_visible_devices_mapping(monkeypatch):
    assert visible_device(1, "3,5") == ("index", 5)
    assert visible_device(0, "GPU-abc") == ("uuid", "GPU-abc")
    assert visible_device(2, None) == ("index", 2)
    with pytest.raises(UserError, match="exposes 2 device"):
        visible_device(2, "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    nv = fake_nvml()
    nv.nvmlDeviceGetHandleByUUID.return_value = "hu"
    g = NvmlGpu(0, nvml=nv)
    nv.nvmlDeviceGetHandleByUUID.assert_called_once_with("GPU-1234")
    g.reset_clocks()
    nv.nvmlDeviceResetGpuLockedClocks.assert_called_once_with("hu")


def emulated():
    return EmulatedGpu(gpu_spec("a100-80g-sxm4"))


def test_guard_restores_on_exception_and_on_partial_failure():
    a, b = emulated(), emulated()
    with pytest.raises(RuntimeError), ClockGuard([a, b]) as g:
        g.set(1005)
        assert a.locked == (1005, 1005) and b.locked == (1005, 1005)
        raise RuntimeError("boom")
    assert a.locked is None and b.locked is None
    # A GPU whose lock call fails half-way is reset too.
    c = emulated()
    c.lock_clocks = mock.Mock(side_effect=UserError("refused"))  # type: ignore[method-assign]
    with pytest.raises(UserError), ClockGuard([a, c]) as g:
        g.set(1005)
    assert a.locked is None and c.lock_calls[-1] is None


def test_guard_without_locking_touches_nothing():
    a = emulated()
    with ClockGuard([a], lock=False) as g:
        g.set(1005)
    assert a.lock_calls == []


def test_guard_restores_on_sigterm_and_ctrl_c():
    a = emulated()
    with pytest.raises(SystemExit) as e, ClockGuard([a]) as g:
        g.set(1005)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises inside this sleep
    assert e.value.code == 128 + signal.SIGTERM
    assert a.locked is None
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt), ClockGuard([a]) as g:
        g.set(1200)
        raise KeyboardInterrupt
    assert a.locked is None


def test_voltana_profile_restores_clocks_when_killed(tmp_path):
    """A real process, a real SIGTERM: the emulated GPU's lock state (mirrored to a file) ends reset."""
    state = tmp_path / "gpu.json"
    cmd = [sys.executable, "-m", "voltana_cli", "profile", "--backend", "sim", "--out", str(tmp_path / "p"),
           "--clocks", "1005,1410", "--batch-sizes", "1,8", "--prefill-tokens", "64", "--prefill-seqs", "1",
           "--emulated-state", str(state), "--slow-s", "0.05"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    import json
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["locked"] is not None:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the profile never locked a clock")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    final = json.loads(state.read_text())
    assert final["locked"] is None and final["calls"] >= 2
    assert "Traceback" not in err
    assert not (tmp_path / "p" / "profile.csv").exists()  # nothing half-written


def test_timer_repeats_until_the_window_is_long_enough_and_reports_energy_per_call():
    from voltana_cli.core.profiling.plan import Timer

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
    from voltana_cli.core.profiling.run import ProfileRequest, _gpu_clocks

    g = emulated()
    ident = g.identity()
    assert _gpu_clocks(ProfileRequest(), g, ident) == [1410]  # unlocked: the clock the card runs at
    with pytest.raises(UserError, match="several --clocks need --lock-clocks"):
        _gpu_clocks(ProfileRequest(clocks_mhz=[1005, 1410]), g, ident)
    assert _gpu_clocks(ProfileRequest(clocks_mhz=[1005, 1410], lock_clocks=True), g, ident) == [1005, 1410]
    with pytest.raises(UserError, match="--clocks 1007: this GPU supports 210-1410 MHz"):
        _gpu_clocks(ProfileRequest(clocks_mhz=[1007], lock_clocks=True), g, ident)
