"""One CPU training step of the CPU pair's large model (bert-micro, vocab 8192, batch 16 x 64), as the loop takes it
(bench/step.py): tokens/s and MFU.

Skipped by default (`--benchmark-skip` in addopts); run with `pytest tests/benchmarks/test_step.py --benchmark-only`.
MFU is the step's executed FLOPs (FlopCounterMode, as the loop charges them) / (mean step seconds x the CPU's
measured matmul peak on the threads torch uses; tests/conftest.py sets one). Both land in `benchmark.extra_info`.
"""

import torch

from bench.collectors.flops import count_executed_step
from bench.hardware import resolve_peak


def test_one_training_step_of_bert_micro(benchmark, micro_step):
    flops = count_executed_step(micro_step.phase, micro_step.batch)
    benchmark.pedantic(micro_step.train, rounds=10, iterations=1, warmup_rounds=2)
    seconds = benchmark.stats["mean"]
    peak, source = resolve_peak(torch.device("cpu"), torch.float32)
    mfu = flops / (seconds * peak)
    benchmark.extra_info.update({
        "tokens_per_s": micro_step.batch["input_ids"].numel() / seconds, "flops_per_step": flops, "cpu_peak_flops": peak,
        "cpu_peak_source": source, "mfu": mfu, "threads": torch.get_num_threads(),
    })
    assert 0 < mfu < 1.5  # a measured peak on a busy machine is noisy; a step far past it is a counting bug
