"""What every job shares: the data (corpus, tokenizer, batches), the device and loop settings, and the
unit of every budget, one training step of a size from scratch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import transformers

from bench import data
from bench.collectors.cost import load_prices
from bench.errors import BenchError
from bench.phases import Phase
from bench.sizes import Pair, Size, defaults_for
from bench.train import BatchSource, LoopConfig, OptimConfig, step_flops, step_seconds

PARENT_SEED = 0  # the parent is one fixed asset shared by every seed, as in the papers


transformers.utils.logging.disable_progress_bar()  # our own bars show progress; no per-file load/save bars


@dataclass
class DataConfig:
    corpus: list[str] | None = None  # None = the built-in docstring corpus
    tokenizer_dir: str | None = None
    seq_len: int = 64
    batch_size: int = 16
    vocab_size: int = 8192


@dataclass
class Prepared:
    """Data shared by every run of a comparison."""

    tokenized: data.TokenizedCorpus
    corpus: data.Corpus
    objective: str
    config: DataConfig

    @property
    def tokenizer(self):
        return self.tokenized.tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def source(self, seed: int) -> BatchSource:
        stream = data.BatchStream(self.tokenized.train, self.tokenizer, self.objective, self.config.seq_len,
                                  self.config.batch_size, seed)
        validation = data.validation_batches(self.tokenized, self.objective, self.config.seq_len,
                                             self.config.batch_size)
        return BatchSource(stream.batch, validation, self.config.seq_len * self.config.batch_size)

    def fingerprint(self) -> dict:
        return {"corpus": self.corpus.fingerprint, "tokens": self.tokenized.fingerprint,
                "vocab_size": self.vocab_size, **asdict(self.config)}


def prepare_data(pair: Pair, config: DataConfig) -> Prepared:
    corpus = data.load_corpus(config.corpus)
    tokenizer = data.load_tokenizer(corpus, pair.family.tokenizer_kind, config.vocab_size, config.tokenizer_dir)
    return Prepared(data.tokenize_corpus(corpus, tokenizer), corpus, pair.family.objective, config)




def resolve_device(name: str, dtype: str) -> tuple[torch.device, torch.dtype | None]:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise BenchError(f"unknown device {name!r}; use auto, cpu or cuda")
    device = torch.device(name)
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise BenchError(f"unknown dtype {dtype!r}; use auto, fp32 or bf16")
    return device, torch.bfloat16 if dtype == "bf16" else None


def loop_config(pair: Pair, device: str = "auto", dtype: str = "auto", lr: float | None = None,
                eval_points: int = 20, progress_bar: bool = True, label: str = "") -> LoopConfig:
    torch_device, autocast = resolve_device(device, dtype)
    optim = OptimConfig() if lr is None else OptimConfig(lr=lr)
    return LoopConfig(optim=optim, eval_points=eval_points, device=torch_device, autocast_dtype=autocast,
                      micro_batch=pair.defaults.micro_batch if torch_device.type == "cpu" else None,
                      progress_bar=progress_bar, label=label)


def plain_phase(size: Size, prepared: Prepared, seed: int) -> Phase:
    model = size.build(prepared.vocab_size, prepared.config.seq_len, seed, prepared.pad_token_id)
    return Phase("train", model)


def scratch_step(size: Size, prepared: Prepared, loop: LoopConfig) -> tuple[float, float]:
    """(executed FLOPs, seconds) of one training step of `size` from scratch: the unit of --budget-steps."""
    phase = plain_phase(size, prepared, seed=0)
    batch = prepared.source(0).batch(0)
    return step_flops(phase, batch, loop), step_seconds(phase, batch, loop)




def standalone(size: Size, corpus, tokenizer_dir, device, dtype, lr, progress_bar, label) -> tuple[
        Prepared, LoopConfig, dict]:
    """Data, loop settings and prices for a command that works on one size (pretrain, grow)."""
    defaults = defaults_for(size)
    prepared_config = DataConfig(corpus, tokenizer_dir, defaults.seq_len, defaults.batch_size, defaults.vocab_size)
    pair = Pair(size, size)
    loop = loop_config(pair, device, dtype, lr, progress_bar=progress_bar, label=label)
    return prepare_data(pair, prepared_config), loop, load_prices()
