import time

import pytest
import torch

from bench.collectors import RunInfo
from bench.collectors import clock as clock_module
from bench.collectors.clock import ClockCollector, median_step_seconds
from bench.objective import IGNORE
from bench.phases import Phase
from bench.sizes import get_size

VOCAB, BATCH, SEQ = 512, 4, 32


@pytest.fixture
def phase_and_batch():
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    input_ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, ::5] = input_ids[:, ::5]
    phase = Phase("train", model)
    phase.prepare()
    return phase, {"input_ids": input_ids, "labels": labels}


def test_median_step_seconds_times_a_step_without_training(phase_and_batch):
    phase, batch = phase_and_batch
    before = {name: tensor.clone() for name, tensor in phase.model.state_dict().items()}
    seconds = median_step_seconds(phase, batch, repeats=3)
    assert 0 < seconds < 5
    assert all(torch.equal(before[name], tensor) for name, tensor in phase.model.state_dict().items())
    assert all(parameter.grad is None for parameter in phase.trainable)


def test_windows_are_timed_apart_and_accumulate_over_phases(phase_and_batch, tmp_path):
    phase, batch = phase_and_batch
    clock = ClockCollector(RunInfo(torch.device("cpu"), tmp_path))
    with clock.window("overhead"):
        clock.start_phase(phase, batch)
    with clock.window("train"):
        time.sleep(0.05)
    with clock.window("eval"):
        time.sleep(0.02)
    first = clock.end_phase(4, {})
    assert first["train_s"] == pytest.approx(0.05, abs=0.04)
    assert first["eval_s"] == pytest.approx(0.02, abs=0.04)
    assert first["overhead_s"] >= 2 * first["reference_step_s"]  # the calibration (median of 3) ran inside it
    assert first["reference_s"] == 4 * first["reference_step_s"]
    assert first["device_kind"] == "cpu-core-hours"
    assert first["device_hours"] == first["train_s"] * torch.get_num_threads() / 3600

    with clock.window("overhead"):
        clock.start_phase(phase, batch)
    with clock.window("train"):
        time.sleep(0.03)
    row = clock.snapshot({"step": 6})
    second = clock.end_phase(2, {})
    assert row["train_s"] == pytest.approx(first["train_s"] + second["train_s"])
    assert row["eval_s"] == first["eval_s"]
    assert row["reference_s"] == pytest.approx(first["reference_s"] + second["reference_s"])
    assert row["wall_s"] >= row["train_s"] + row["eval_s"] + row["overhead_s"]


def test_a_varying_phase_is_calibrated_per_variant(tmp_path, monkeypatch):
    """Each step is charged its own variant's calibrated time, not the first step's."""
    model = get_size("bert-nano").build(VOCAB, SEQ, seed=0)
    kind = (lambda step: "deep" if step % 3 == 0 else "shallow")
    phase = Phase("sampled", model, variant=kind)
    calibrated = []

    def fake_median(phase, batch, repeats=3, step=0):
        calibrated.append(kind(step))
        return {"deep": 1.0, "shallow": 0.25}[kind(step)]

    monkeypatch.setattr(clock_module, "median_step_seconds", fake_median)
    clock = ClockCollector(RunInfo(torch.device("cpu"), tmp_path))
    clock.start_phase(phase, {}, steps=6)
    assert sorted(calibrated) == ["deep", "shallow"]  # once per variant
    assert clock.snapshot({"step": 2})["reference_s"] == 1.25
    row = clock.end_phase(6, {})
    assert row["reference_s"] == 2 * 1.0 + 4 * 0.25
    assert row["reference_step_s"] == row["reference_s"] / 6
