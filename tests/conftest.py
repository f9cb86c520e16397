from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Tiny models run fastest on one thread; two threads fight over two cores with pytest itself.
torch.set_num_threads(1)


SENTENCES = [
    "The parser reads the configuration file and returns a dictionary of options.",
    "Each worker process handles one request at a time and reports its status.",
    "A tokenizer splits text into pieces that the model maps to vectors.",
    "Training stops when the validation loss no longer improves for several evaluations.",
    "The scheduler lowers the learning rate linearly until it reaches zero at the end.",
    "Weights are saved in the safetensors format so that loading never runs code.",
]


def write_corpus(folder: Path) -> Path:
    """Twelve small documents of SENTENCES: enough text to train a tokenizer and a few steps on."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(12):
        paragraphs = [" ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(4)) for _ in range(30)]
        (folder / f"doc{index}.txt").write_text("\n\n".join(f"{p} ({index}.{n})" for n, p in enumerate(paragraphs)))
    return folder


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """write_corpus's corpus, and a growbench cache of the test's own."""
    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """write_corpus's corpus, and a growbench cache shared by the test module (tokenizer and parent trained once)."""
    root = tmp_path_factory.mktemp("corpus")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROWBENCH_CACHE", str(root / "cache"))
        yield write_corpus(root / "corpus")


@dataclass
class MicroStep:
    """One training step of the CPU pair's large model (bert-micro, vocab 8192, batch 16 x 64) as the loop takes it
    (bench/step.py: the batch prepared with its scored positions, forward and backward, clipping, AdamW, the loss
    read): the benchmarks'."""

    phase: object  # bench.phases.Phase
    batch: dict[str, torch.Tensor]
    optimizer: torch.optim.AdamW

    def train(self, step: int = 0) -> None:
        from bench.distributed import World
        from bench.step import LossMeter, StepBatches, StepLoss, optimizer_step
        from bench.train import LoopConfig

        config, world = LoopConfig(progress_bar=False), World()
        chunks = StepBatches(lambda _: self.batch, False, None, config.device, world).get(step)
        meter = LossMeter(config.device)
        meter.add(optimizer_step(StepLoss.of(self.phase, config.device, world), self.phase.trainable, self.optimizer,
                                 1e-4, chunks, step, 0.0, config, world, step), step)
        meter.read(world)


@pytest.fixture(scope="module")
def micro_step() -> MicroStep:
    """bert-micro from seed 0 on a fixed MLM batch (15% of positions scored), with its AdamW."""
    from bench.objective import IGNORE
    from bench.phases import Phase
    from bench.sizes import get_size

    vocab, batch, seq = 8192, 16, 64
    model = get_size("bert-micro").build(vocab, seq, seed=0)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab, (batch, seq), generator=generator)
    labels = input_ids.masked_fill(torch.rand(batch, seq, generator=generator) > 0.15, IGNORE)
    phase = Phase("train", model)
    phase.prepare()
    return MicroStep(phase, {"input_ids": input_ids, "labels": labels}, torch.optim.AdamW(phase.trainable, lr=1e-4))
