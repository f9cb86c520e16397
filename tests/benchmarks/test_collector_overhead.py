"""What the collectors cost on the CPU pair's large model (bert-micro, vocab 8192, batch 16 x 64).

Skipped by default (`--benchmark-skip` in addopts); run with `pytest tests/benchmarks --benchmark-only`.
The loop opens one train window per stretch between eval points (50 steps here), so the windows'
enter + exit must stay within 3% of such a stretch, and counting a phase's FLOPs within 2 s.
"""

import pytest
import torch

from bench.collectors import CollectorSet, RunInfo, make_collectors
from bench.collectors.clock import median_step_seconds
from bench.collectors.cost import load_prices
from bench.collectors.flops import FlopsCollector, count_executed_step

STRETCH = 50


@pytest.fixture(scope="module")
def training(micro_step, tmp_path_factory):
    phase, batch = micro_step.phase, micro_step.batch
    run = RunInfo(torch.device("cpu"), tmp_path_factory.mktemp("run"), load_prices())
    collectors = CollectorSet(make_collectors(run))
    with collectors.window("overhead"):
        collectors.start_phase(phase, batch)
    return phase, batch, micro_step.optimizer, collectors


def train_stretch(phase, batch, optimizer):
    for step in range(STRETCH):
        phase.forward_backward(batch, step, 0.0)
        optimizer.step()
        phase.zero_grad()


def test_stretch_without_windows(benchmark, training):
    phase, batch, optimizer, _ = training
    benchmark.pedantic(train_stretch, args=(phase, batch, optimizer), rounds=3, iterations=1, warmup_rounds=1)


def test_stretch_with_all_windows(benchmark, training):
    phase, batch, optimizer, collectors = training

    def windowed_stretch():
        with collectors.window("train"):
            train_stretch(phase, batch, optimizer)

    benchmark.pedantic(windowed_stretch, rounds=3, iterations=1, warmup_rounds=1)


def test_window_overhead_is_within_3_percent_of_a_stretch(benchmark, training):
    phase, batch, _, collectors = training
    stretch_seconds = STRETCH * median_step_seconds(phase, batch)

    def open_and_close_windows():
        with collectors.window("train"):
            pass

    benchmark.pedantic(open_and_close_windows, rounds=20, iterations=1)
    benchmark.extra_info["share_of_a_stretch"] = benchmark.stats["mean"] / stretch_seconds
    assert benchmark.stats["mean"] < 0.03 * stretch_seconds


def test_flop_counting_of_one_phase_takes_under_2_seconds(benchmark, training, tmp_path):
    phase, batch, _, _ = training

    def count_phase():  # a fresh collector each round, so nothing is cached
        FlopsCollector(RunInfo(torch.device("cpu"), tmp_path)).start_phase(phase, batch)
        count_executed_step(phase, batch)

    benchmark.pedantic(count_phase, rounds=3, iterations=1, warmup_rounds=1)
    assert benchmark.stats["median"] < 2.0
