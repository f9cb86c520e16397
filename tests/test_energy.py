import math
from types import SimpleNamespace

import pynvml
import pytest
import torch

from bench.collectors import RunInfo, energy
from bench.collectors.energy import EnergyCollector, carbon_intensity
from bench.errors import BenchError


class FakeNvml:
    """NVML with a cumulative energy counter that gains 3.6e6 mJ (1 Wh) per read, or fails from read `fail_at`."""

    NVMLError = pynvml.NVMLError

    def __init__(self, fail_at: int | None = None):
        self.millijoules, self.reads, self.fail_at, self.opened_index = 0, 0, fail_at, None

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        self.opened_index = index
        return "handle"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self.reads += 1
        if self.fail_at is not None and self.reads >= self.fail_at:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self.millijoules += 3.6e6
        return self.millijoules


class CPU:
    _mode = "cpu_load"


class SteadyTracker:
    """A codecarbon tracker that reports 2 Wh of CPU and 1 Wh of RAM per task."""

    def __init__(self, **kwargs):
        self._hardware = [CPU()]

    def start_task(self, name):
        pass

    def stop_task(self):
        return SimpleNamespace(cpu_energy=0.002, ram_energy=0.001)


class BrokenTracker:
    """A codecarbon tracker that cannot read the machine."""

    def __init__(self, **kwargs):
        pass

    def start_task(self, name):
        raise RuntimeError("RAPL files unreadable")


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(fail_at=None):
        fake = FakeNvml(fail_at)
        monkeypatch.setattr(energy, "pynvml", fake)
        monkeypatch.setattr(energy, "OfflineEmissionsTracker", SteadyTracker)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
        return fake

    return install


def run_windows(collector, kinds=("overhead", "train", "train", "eval")):
    collector.start_phase(None, {})
    for kind in kinds:
        with collector.window(kind):
            pass


def test_nvml_counter_is_differenced_per_window_and_labelled_measured(fake_gpu, tmp_path):
    fake = fake_gpu()
    collector = EnergyCollector(RunInfo(torch.device("cuda", 0), tmp_path))
    assert fake.opened_index == 3  # the physical GPU behind CUDA_VISIBLE_DEVICES
    run_windows(collector)
    row = collector.end_phase(10, {})
    assert row["energy_gpu_method"] == "nvml_energy (measured)"
    assert row["energy_gpu_kwh"] == pytest.approx(2 * 0.001)  # two train windows, one read-to-read step each
    assert row["energy_cpu_kwh"] == pytest.approx(2 * 0.002)
    assert row["energy_cpu_method"] == "tdp_estimate (estimated, codecarbon cpu_load)"
    assert row["energy_eval_kwh"] == pytest.approx(0.001 + 0.002 + 0.001)
    assert row["energy_kwh"] == pytest.approx(2 * (0.001 + 0.002 + 0.001))
    assert row["co2_kg"] == pytest.approx(row["energy_kwh"] * 475 / 1000)
    assert collector.snapshot({})["energy_kwh"] == row["energy_kwh"]


def test_nvml_failure_mid_run_is_labelled_unavailable_not_zero(fake_gpu, tmp_path):
    fake_gpu(fail_at=6)  # construction reads once; the third window fails
    collector = EnergyCollector(RunInfo(torch.device("cuda", 0), tmp_path))
    run_windows(collector)
    row = collector.end_phase(10, {})
    assert row["energy_gpu_kwh"] is None
    assert row["energy_gpu_method"].startswith("unavailable: NVMLError")
    assert row["energy_method"].startswith("partial: gpu unavailable")
    assert collector.snapshot({})["energy_method"].startswith("partial")


def test_codecarbon_that_raises_leaves_a_labelled_row(monkeypatch, tmp_path):
    monkeypatch.setattr(energy, "OfflineEmissionsTracker", BrokenTracker)
    collector = EnergyCollector(RunInfo(torch.device("cpu"), tmp_path))
    run_windows(collector)
    row = collector.end_phase(10, {})
    assert row["energy_cpu_method"] == "unavailable: RuntimeError: RAPL files unreadable"
    assert row["energy_ram_method"].startswith("unavailable")
    assert row["energy_cpu_kwh"] is None and row["energy_kwh"] is None and row["co2_kg"] is None
    assert row["energy_gpu_method"].startswith("not_used")
    assert row["energy_method"] == "unavailable"


def test_codecarbon_estimates_cpu_and_ram_here_and_writes_nothing(tmp_path):
    collector = EnergyCollector(RunInfo(torch.device("cpu"), tmp_path, country="FRA"))
    collector.start_phase(None, {})
    with collector.window("train"):
        sum(i * i for i in range(300_000))
    row = collector.end_phase(1, {})
    assert row["energy_cpu_method"].split(" ")[0] in ("tdp_estimate", "rapl")
    assert row["energy_ram_method"].startswith("ram_heuristic")
    assert row["energy_kwh"] > 0 and math.isfinite(row["energy_kwh"])
    assert row["carbon_region"] == "France" and row["carbon_g_per_kwh"] < 475
    assert list(tmp_path.iterdir()) == []


def test_countries():
    assert carbon_intensity("WLD").g_per_kwh == 475
    assert carbon_intensity("wld", {"g_per_kwh": 300.0, "source": "mine"}).source == "mine"
    assert carbon_intensity("DEU").region == "Germany"
    with pytest.raises(BenchError, match="unknown country"):
        carbon_intensity("XYZ")
