import math
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


def _table(phase, batch, step_s, full_step_s):
    from bench.calibration import CalibrationTable, Timing, phase_signature

    signature = phase_signature(phase, batch)
    return CalibrationTable({signature: Timing(signature, [step_s, 2 * step_s], full_step_s)}), signature


def test_the_comparison_table_sets_the_reference_step_and_the_slowdown(phase_and_batch, tmp_path, monkeypatch):
    """A phase whose signature is in the table is charged the table's step time exactly, calibrates nothing itself,
    and is contended when its train steps take more than the threshold x the table's full step."""
    phase, batch = phase_and_batch
    table, signature = _table(phase, batch, step_s=0.1234567, full_step_s=0.002)
    monkeypatch.setattr(clock_module, "median_step_seconds", lambda *args, **kwargs: pytest.fail("calibrated"))
    clock = ClockCollector(RunInfo(torch.device("cpu"), tmp_path, calibration=table))
    clock.start_phase(phase, batch, steps=7)
    with clock.window("train"):
        time.sleep(0.05)  # 7 steps in 0.05 s: over 3 ms a step, against a calibrated 2 ms
    row = clock.end_phase(7, {})
    assert row["reference_step_s"] == 0.1234567 and row["reference_s"] == 7 * 0.1234567
    assert row["signature"] == signature and row["reference_source"] == "comparison calibration"
    assert row["slowdown"] == pytest.approx(row["train_s"] / 7 / 0.002) and row["slowdown"] > 3
    assert row["contended"] is True
    assert row["load_avg"] >= 0

    clock.start_phase(phase, batch, steps=2)
    row = clock.end_phase(2, {})
    assert row["contended"] is None  # too few steps to judge


def test_a_signature_missing_from_the_table_is_calibrated_here_and_labelled(phase_and_batch, tmp_path):
    phase, batch = phase_and_batch
    other = {key: value[:, :16] for key, value in batch.items()}  # another micro-batch shape: another signature
    table, _ = _table(phase, other, step_s=9.0, full_step_s=9.0)
    clock = ClockCollector(RunInfo(torch.device("cpu"), tmp_path, calibration=table))
    clock.start_phase(phase, batch, steps=6)
    row = clock.end_phase(6, {})
    assert row["reference_step_s"] < 5 and row["reference_source"].startswith("phase calibration (signature not")
    assert math.isnan(row["slowdown"]) and row["contended"] is None  # no calibrated full step: not judged
