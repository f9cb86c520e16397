"""MFU (collector, peak table, measured CPU peak), --dtype tf32, --micro-batch, the parent key's device and dtype,
and scripts/gpu_check.sh (it parses; its assertions accept a good run directory and refuse bad ones)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import hardware
from bench.cli import main
from bench.collectors import CollectorSet, RunInfo, collector_names
from bench.collectors import mfu as mfu_module
from bench.collectors.clock import ClockCollector
from bench.collectors.mfu import MfuCollector, mfu
from bench.errors import BenchError
from bench.hardware import PEAK_FLOPS, TF32, resolve_peak, set_matmul_precision
from bench.objective import IGNORE
from bench.phases import Phase
from bench.runner.parent import parent_key
from bench.runner.prepare import check_micro_batch, loop_config, resolve_device
from bench.sizes import get_size, parse_pair
from bench.train import BatchSource, Budget, LoopConfig, train_phases

VOCAB, SEQ, BATCH = 200, 16, 4
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def synthetic_batch(step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    labels = torch.where(torch.rand(BATCH, SEQ, generator=generator) < 0.3, ids, torch.full_like(ids, IGNORE))
    return {"input_ids": ids, "labels": labels}


def tiny_run(tmp_path: Path, with_mfu: bool):
    run = RunInfo(torch.device("cpu"), tmp_path)
    collectors = [ClockCollector(run), *([MfuCollector(run)] if with_mfu else [])]
    source = BatchSource(synthetic_batch, [synthetic_batch(10_000)], BATCH * SEQ)
    phase = Phase("train", get_size("bert-nano").build(VOCAB, SEQ, 0))
    return train_phases(iter([phase]), Budget("tokens", 6 * BATCH * SEQ), source, LoopConfig(progress_bar=False, eval_points=2),
                        CollectorSet(collectors))


# --------------------------------------------------------------------------------------------- peak table


def test_the_peak_table_has_tf32_between_bf16_and_fp32_for_tensor_core_gpus():
    for model, tf32 in (("H200", 494.5e12), ("H100", 494.5e12), ("A100-80GB", 156e12), ("A100-40GB", 156e12)):
        peaks = PEAK_FLOPS[model]
        assert peaks[TF32] == tf32
        assert peaks[torch.bfloat16] > peaks[TF32] > peaks[torch.float32]
    assert TF32 not in PEAK_FLOPS["V100"]  # no TF32 before Ampere


def test_gpu_peak_follows_the_runs_math_and_names_its_source(monkeypatch):
    monkeypatch.setattr(hardware, "device_model", lambda device: "H100")
    cuda = torch.device("cuda", 0)
    assert resolve_peak(cuda, torch.bfloat16) == (989e12, "H100 bf16 dense, NVIDIA datasheet")
    assert resolve_peak(cuda, TF32) == (494.5e12, "H100 tf32 dense, NVIDIA datasheet")
    assert resolve_peak(cuda, torch.float32) == (67e12, "H100 fp32 dense, NVIDIA datasheet")
    monkeypatch.setattr(hardware, "device_model", lambda device: "V100")
    assert resolve_peak(cuda, torch.bfloat16) == (None, "unavailable: V100 has no bf16 entry in the peak table")
    monkeypatch.setattr(hardware, "device_model", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    assert resolve_peak(cuda, torch.bfloat16) == (None, "unavailable: NVIDIA GeForce RTX 4090 not in the peak table")


def test_cpu_peak_is_measured_once_and_labelled():
    peak, source = resolve_peak(torch.device("cpu"), torch.float32)
    assert peak > 1e8 and source.startswith("measured matmul peak: fp32")
    assert resolve_peak(torch.device("cpu"), torch.float32) == (peak, source)  # cached for the process
    assert resolve_peak(torch.device("cpu"), torch.float16)[0] is None


# --------------------------------------------------------------------------------------------- the collector


def test_mfu_is_nan_never_zero_without_time_or_peak():
    assert math.isnan(mfu(1e9, 0.0, 1, 1e12))
    assert math.isnan(mfu(1e9, 1.0, 1, None))
    assert mfu(1e12, 2.0, 1, 1e12) == 0.5


def test_mfu_runs_after_the_flops_and_clock_columns_it_divides():
    names = collector_names()
    assert names.index("flops") < names.index("clock") < names.index("mfu")


def test_cpu_run_gets_mfu_against_the_measured_peak_and_is_otherwise_unchanged(tmp_path):
    with_mfu = tiny_run(tmp_path / "a", with_mfu=True)
    without = tiny_run(tmp_path / "b", with_mfu=False)
    assert [row["val_loss"] for row in with_mfu.curve] == [row["val_loss"] for row in without.curve]
    assert [row["flops"] for row in with_mfu.curve] == [row["flops"] for row in without.curve]
    (row,) = with_mfu.phases
    peak, source = resolve_peak(torch.device("cpu"), torch.float32)
    assert row["mfu_peak_source"] == source and row["mfu_peak_flops"] == peak
    assert row["mfu"] == pytest.approx(row["flops_executed"] / (row["train_s"] * peak))
    assert 0 < row["mfu"] < 1.5  # a noisy measured peak on a busy machine; far from 0 either way
    assert math.isnan(with_mfu.curve[0]["mfu"]) and with_mfu.curve[-1]["mfu"] > 0  # no training time yet at step 0


def test_gpu_mfu_uses_the_table_peak_of_the_runs_math(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "device_model", lambda device: "H200")
    monkeypatch.setattr(mfu_module, "run_math", lambda device: TF32)
    collector = MfuCollector(RunInfo(torch.device("cuda", 0), tmp_path))
    collector.start_phase(None, {})
    row = collector.end_phase(10, {"flops_executed": 494.5e12, "train_s": 4.0, "devices": 1})
    assert row == {"mfu": 0.25, "mfu_peak_flops": 494.5e12, "mfu_peak_source": "H200 tf32 dense, NVIDIA datasheet"}
    assert collector.snapshot({"flops": 494.5e12, "train_s": 2.0})["mfu"] == 0.5


def test_unknown_gpu_gives_a_labelled_nan(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "device_model", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    monkeypatch.setattr(mfu_module, "run_math", lambda device: torch.bfloat16)
    collector = MfuCollector(RunInfo(torch.device("cuda", 0), tmp_path))
    collector.start_phase(None, {})
    row = collector.end_phase(10, {"flops_executed": 1e12, "train_s": 4.0, "devices": 1})
    assert math.isnan(row["mfu"]) and math.isnan(row["mfu_peak_flops"])
    assert row["mfu_peak_source"] == "unavailable: Some GPU not in the peak table"


# --------------------------------------------------------------------------------------------- --dtype


def test_dtype_resolves_to_autocast_and_tf32():
    cpu = torch.device("cpu")
    assert resolve_device("cpu", "auto") == (cpu, None, False)
    assert resolve_device("cpu", "fp32") == (cpu, None, False)
    assert resolve_device("cpu", "bf16") == (cpu, torch.bfloat16, False)
    with pytest.raises(BenchError, match="tf32 needs a CUDA device"):
        resolve_device("cpu", "tf32")
    with pytest.raises(BenchError, match="use auto, fp32, tf32 or bf16"):
        resolve_device("cpu", "fp8")


def test_tf32_switches_are_touched_on_cuda_only():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    set_matmul_precision(torch.device("cpu"), True)
    assert (matmul.allow_tf32, cudnn.allow_tf32) == before
    loop_config(parse_pair("bert-nano:bert-micro"), "cpu", "fp32")
    assert (matmul.allow_tf32, cudnn.allow_tf32) == before
    try:
        set_matmul_precision(torch.device("cuda"), True)
        assert matmul.allow_tf32 and cudnn.allow_tf32
        assert hardware.math_name(torch.device("cuda"), None) == "tf32"
        set_matmul_precision(torch.device("cuda"), False)
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
        assert hardware.math_name(torch.device("cuda"), None) == "fp32"
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def test_tf32_on_cpu_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path))
    assert main(["compare", "--methods", "scratch", "--device", "cpu", "--dtype", "tf32", "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tf32 needs a CUDA device" in err[0], err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- --micro-batch


def test_micro_batch_defaults_to_the_pairs_and_must_divide_the_batch():
    cpu_pair, paper_pair = parse_pair("bert-nano:bert-micro"), parse_pair("bert-small:bert-base")
    assert loop_config(cpu_pair, "cpu").micro_batch is None
    assert loop_config(paper_pair, "cpu").micro_batch == 32
    assert loop_config(cpu_pair, "cpu", micro_batch=8).micro_batch == 8
    assert loop_config(cpu_pair, "cpu", micro_batch=16).micro_batch == 16  # the whole batch: no accumulation
    check_micro_batch(None, 16)
    for bad, words in ((0, "positive"), (17, "larger than the batch"), (5, "does not divide"), (True, "positive")):
        with pytest.raises(BenchError, match=words):
            check_micro_batch(bad, 16)
    with pytest.raises(BenchError, match="larger than the batch"):
        loop_config(cpu_pair, "cpu", micro_batch=8, batch_size=4)


@pytest.mark.parametrize("value, words", [("32", "larger than the batch"), ("5", "does not divide"),
                                          ("0", "must be a positive whole number")])
def test_bad_micro_batch_is_one_line_and_exit_2(value, words, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path))
    assert main(["compare", "--methods", "scratch", "--micro-batch", value, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_micro_batch_reaches_the_comparison(tmp_path, monkeypatch, capsys):
    from bench import runner

    seen = {}

    def compare(config, echo=print):
        seen["config"] = config
        return config.out

    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runner, "compare", compare)
    monkeypatch.setattr(runner, "report", lambda out, target=None: SimpleNamespace(text="the report"))
    assert main(["compare", "--methods", "scratch", "--micro-batch", "8", "--out", str(tmp_path / "run")]) == 0
    assert seen["config"].micro_batch == 8


# --------------------------------------------------------------------------------------------- the parent key


def test_parent_key_changes_with_device_dtype_and_micro_batch():
    size = get_size("bert-nano")
    prepared = SimpleNamespace(fingerprint=lambda: {"corpus": "c"})
    cpu = LoopConfig()
    key = parent_key(size, 10, prepared, cpu)
    assert key == parent_key(size, 10, prepared, LoopConfig())
    others = [LoopConfig(device=torch.device("cuda"), autocast_dtype=torch.bfloat16),
              LoopConfig(autocast_dtype=torch.bfloat16), LoopConfig(micro_batch=8)]
    keys = {parent_key(size, 10, prepared, loop) for loop in others}
    assert key not in keys and len(keys) == len(others)


# --------------------------------------------------------------------------------------------- scripts/gpu_check.sh


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def _snippet() -> str:
    text = SCRIPT.read_text()
    return text.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]


def _fake_gpu_dir(root: Path, dtype: str, runs: list[str], row: dict, mfu_value: float = 0.3,
                  energy: str = "nvml_energy (measured)") -> Path:
    """A run directory with `row` (a real CPU phase row) dressed as one GPU phase of each of `runs`."""
    fake = {**row, "mfu": mfu_value, "mfu_peak_flops": row["flops_executed"] / (row["train_s"] * mfu_value),
            "mfu_peak_source": f"H100 {dtype} dense, NVIDIA datasheet", "energy_gpu_method": energy,
            "energy_gpu_kwh": 1e-6, "energy_kwh": 2e-6, "devices": 1}
    for run in runs:
        folder = root / "runs" / run
        folder.mkdir(parents=True)
        with open(folder / "phases.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fake))
            writer.writeheader()
            writer.writerow(fake)
    return root


def _check(bf16: Path, tf32: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-", str(bf16), str(tf32)], input=_snippet(), text=True, check=False,
                          capture_output=True)


def test_gpu_check_assertions_pass_a_good_directory_and_refuse_bad_ones(tmp_path):
    (row,) = tiny_run(tmp_path / "real", with_mfu=True).phases
    tf32 = _fake_gpu_dir(tmp_path / "tf32", "tf32", ["scratch-s0"], row)
    good = _check(_fake_gpu_dir(tmp_path / "bf16", "bf16", ["scratch-s0", "ligo-s0"], row), tf32)
    assert good.returncode == 0 and "gpu_check: ok" in good.stdout, good.stderr
    slow = _check(_fake_gpu_dir(tmp_path / "slow", "bf16", ["scratch-s0", "ligo-s0"], row, mfu_value=0.01), tf32)
    assert slow.returncode != 0 and "MFU" in slow.stderr
    estimated = _check(_fake_gpu_dir(tmp_path / "est", "bf16", ["scratch-s0", "ligo-s0"], row,
                                     energy="unavailable: no NVML"), tf32)
    assert estimated.returncode != 0 and "GPU energy" in estimated.stderr
    other = _fake_gpu_dir(tmp_path / "other", "tf32", ["scratch-s0"], {**row, "flops_executed": 2 * row["flops_executed"]})
    differ = _check(_fake_gpu_dir(tmp_path / "bf16b", "bf16", ["scratch-s0", "ligo-s0"], row), other)
    assert differ.returncode != 0 and "FLOPs per step differ" in differ.stderr


# --------------------------------------------------------------------------------------------- above the peak


def _scripted_peaks(monkeypatch, peaks: list[float]) -> list[float]:
    """The CPU peak measured afresh in this test, each measurement the next of `peaks` (FLOP/s); what was asked."""
    asked = []

    def measured(dtype, seconds=0.0):
        asked.append(seconds)
        return peaks[len(asked) - 1]

    monkeypatch.setattr(hardware, "_CPU_PEAKS", {})
    monkeypatch.setattr(hardware, "_cpu_matmul_flops", measured)
    return asked


def test_an_mfu_above_the_peak_measures_the_cpu_peak_again_and_keeps_the_better_one(monkeypatch, tmp_path):
    asked = _scripted_peaks(monkeypatch, [1e9, 4e9])  # measured on a busy machine first
    collector = MfuCollector(RunInfo(torch.device("cpu"), tmp_path))
    collector.start_phase(None, {})
    row = collector.end_phase(10, {"flops_executed": 2.6e9, "train_s": 1.0, "devices": 1})  # 260% of the first peak
    assert row["mfu"] == pytest.approx(0.65) and row["mfu_peak_flops"] == 4e9
    assert row["mfu_peak_source"].endswith(f"measured again for {hardware.CPU_PEAK_AGAIN_SECONDS:g} s after an MFU "
                                           "above 100%")
    assert asked == [0.0, hardware.CPU_PEAK_AGAIN_SECONDS]
    assert resolve_peak(torch.device("cpu"), torch.float32)[0] == 4e9  # the process keeps the better peak


def test_an_mfu_still_above_the_peak_is_refused_never_written_as_a_number(monkeypatch, tmp_path):
    asked = _scripted_peaks(monkeypatch, [1e9, 0.5e9])
    collector = MfuCollector(RunInfo(torch.device("cpu"), tmp_path))
    collector.start_phase(None, {})
    assert math.isnan(collector.snapshot({"flops": 2.6e9, "train_s": 1.0})["mfu"])
    row = collector.end_phase(10, {"flops_executed": 2.6e9, "train_s": 1.0, "devices": 1})
    assert math.isnan(row["mfu"]) and row["mfu_peak_flops"] == 1e9  # the better of the two measurements
    assert row["mfu_peak_source"].startswith(f"{hardware.ABOVE_PEAK} (measured matmul peak: fp32")
    assert len(asked) == 2  # measured again once per run, not at every phase
    collector.start_phase(None, {})
    assert math.isnan(collector.end_phase(10, {"flops_executed": 2.6e9, "train_s": 1.0, "devices": 1})["mfu"])
    assert len(asked) == 2


def test_a_gpu_mfu_above_its_datasheet_peak_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "device_model", lambda device: "H200")
    monkeypatch.setattr(mfu_module, "run_math", lambda device: torch.bfloat16)
    collector = MfuCollector(RunInfo(torch.device("cuda", 0), tmp_path))
    collector.start_phase(None, {})
    row = collector.end_phase(10, {"flops_executed": 2 * 989e12, "train_s": 1.0, "devices": 1})
    assert math.isnan(row["mfu"])
    assert row["mfu_peak_source"] == f"{hardware.ABOVE_PEAK} (H200 bf16 dense, NVIDIA datasheet)"


def test_a_cpu_run_with_a_poisoned_peak_writes_no_mfu_above_100_percent(monkeypatch, tmp_path):
    """The training loop with a peak that stays far too low (a busy machine at both measurements)."""
    _scripted_peaks(monkeypatch, [1e6, 1e6])
    result = tiny_run(tmp_path, with_mfu=True)
    (row,) = result.phases
    assert math.isnan(row["mfu"]) and row["mfu_peak_source"].startswith(hardware.ABOVE_PEAK)
    assert row["flops_executed"] / (row["train_s"] * row["mfu_peak_flops"]) > 1  # it would have been above 100%
    assert all(math.isnan(point["mfu"]) for point in result.curve)  # NaN, never a number above 1
