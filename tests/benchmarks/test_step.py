"""One CPU training step of the CPU pair's large model (bert-micro, vocab 8192, batch 16 x 64): tokens/s and MFU.

Skipped by default (`--benchmark-skip` in addopts); run with `pytest tests/benchmarks/test_step.py --benchmark-only`.
MFU is the step's executed FLOPs (FlopCounterMode, as the loop charges them) / (mean step seconds x the CPU's
measured matmul peak on the threads torch uses; tests/conftest.py sets one). Both land in `benchmark.extra_info`.
"""

import pytest
import torch

from bench.collectors.flops import count_executed_step
from bench.hardware import resolve_peak
from bench.objective import IGNORE
from bench.phases import Phase
from bench.sizes import get_size

VOCAB, BATCH, SEQ = 8192, 16, 64


@pytest.fixture(scope="module")
def step():
    model = get_size("bert-micro").build(VOCAB, SEQ, seed=0)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    labels = input_ids.masked_fill(torch.rand(BATCH, SEQ, generator=generator) > 0.15, IGNORE)
    batch = {"input_ids": input_ids, "labels": labels}
    phase = Phase("train", model)
    phase.prepare()
    optimizer = torch.optim.AdamW(phase.trainable, lr=1e-4)
    flops = count_executed_step(phase, batch)

    def train_step():
        phase.forward_backward(batch, 0, 0.0)
        optimizer.step()
        phase.zero_grad()

    return train_step, flops


def test_one_training_step_of_bert_micro(benchmark, step):
    train_step, flops = step
    benchmark.pedantic(train_step, rounds=10, iterations=1, warmup_rounds=2)
    seconds = benchmark.stats["mean"]
    peak, source = resolve_peak(torch.device("cpu"), torch.float32)
    mfu = flops / (seconds * peak)
    benchmark.extra_info.update({
        "tokens_per_s": BATCH * SEQ / seconds, "flops_per_step": flops, "cpu_peak_flops": peak,
        "cpu_peak_source": source, "mfu": mfu, "threads": torch.get_num_threads(),
    })
    assert 0 < mfu < 1.5  # a measured peak on a busy machine is noisy; a step far past it is a counting bug
