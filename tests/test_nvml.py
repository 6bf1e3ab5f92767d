"""The NVML adapter against an autospec'd ``pynvml``: only these tests need the NVML bindings installed."""

from unittest import mock

import pytest

from voltana_cli.core.errors import UserError
from voltana_cli.core.hardware import NvmlGpu

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
    nv.nvmlDeviceGetUUID.return_value = "GPU-8f0e5c2a-0000-0000-0000-000000000001"
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


def test_energy_is_joules_from_the_64_bit_millijoule_counter(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nv = fake_nvml()
    nv.nvmlDeviceGetTotalEnergyConsumption.return_value = 2**32 + 1234  # past a 32-bit wrap
    nv.nvmlDeviceGetPowerUsage.return_value = 312_500
    g = NvmlGpu(0, nvml=nv)
    e = g.energy_j()
    assert isinstance(e, float) and e == pytest.approx((2**32 + 1234) / 1000.0)
    assert g.power_w() == pytest.approx(312.5)
    nv.nvmlDeviceGetTotalEnergyConsumption.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert g.energy_j() is None  # unavailable, never 0


def test_permission_error_is_one_actionable_line_about_lock_clocks(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nv = fake_nvml()
    nv.nvmlDeviceSetGpuLockedClocks.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
    g = NvmlGpu(0, nvml=nv)
    with pytest.raises(UserError) as e:
        g.lock_clocks(1410, 1410)
    assert e.value.field == "lock_clocks"
    msg = str(e.value)
    assert "CAP_SYS_ADMIN" in msg and "lock_clocks off" in msg and "\n" not in msg
    assert "--" not in msg  # core speaks in fields; the command names its flags


def test_missing_driver_points_at_the_sim_backend(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nv = fake_nvml()
    nv.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(UserError, match="no NVIDIA driver found") as e:
        NvmlGpu(0, nvml=nv)
    assert e.value.field == "backend" and "sim backend" in e.value.problem


def test_cuda_visible_devices_picks_the_handle_by_uuid(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    nv = fake_nvml()
    nv.nvmlDeviceGetHandleByUUID.return_value = "hu"
    g = NvmlGpu(0, nvml=nv)
    nv.nvmlDeviceGetHandleByUUID.assert_called_once_with("GPU-1234")
    g.reset_clocks()
    nv.nvmlDeviceResetGpuLockedClocks.assert_called_once_with("hu")
