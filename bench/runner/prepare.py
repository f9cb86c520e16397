"""What every job shares: the data (corpus, tokenizer, batches), the device and loop settings, and the
unit of every budget, one training step of a size from scratch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import transformers
from transformers import PretrainedConfig

from bench import data, distributed
from bench.collectors.cost import load_prices
from bench.errors import BenchError
from bench.hardware import set_matmul_precision
from bench.phases import Phase
from bench.sizes import Pair, Size, defaults_for
from bench.train import BatchSource, LoopConfig, OptimConfig, step_flops, step_seconds

if TYPE_CHECKING:
    from bench.runner.parent import ParentCheckpoint

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
    # A parent checkpoint the user gave: its tokenizer made the token ids, and every model is built from its config
    # (see `base`). None: growbench's own tokenizer and configs.
    parent: ParentCheckpoint | None = None

    @property
    def tokenizer(self):
        return self.tokenized.tokenizer

    @property
    def base(self) -> PretrainedConfig | None:
        """The config every model takes all but its shape from (the parent checkpoint's), or None."""
        return self.parent.config if self.parent is not None else None

    @property
    def vocab_size(self) -> int:
        """The models' vocabulary: the parent checkpoint's (which may be padded beyond its tokenizer), else the
        tokenizer's."""
        return self.parent.config.vocab_size if self.parent is not None else len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def source(self, seed: int) -> BatchSource:
        stream = data.BatchStream(self.tokenized.train, self.tokenizer, self.objective, self.config.seq_len,
                                  self.config.batch_size, seed)
        return BatchSource(stream.batch, self.validation().batches, self.config.seq_len * self.config.batch_size,
                           causal=self.objective == "causal")

    def validation(self) -> data.ValidationSet:
        """The fixed evaluation set, the same for every run and seed."""
        return data.validation_set(self.tokenized, self.objective, self.config.seq_len, self.config.batch_size)

    def fingerprint(self) -> dict:
        """What the numbers depend on in the data: the corpus and vocabulary used (not those asked for), how the
        batches are scored and the validation set's size (so that a run directory made otherwise is not resumed)."""
        fingerprint = {**asdict(self.config), "corpus": self.corpus.fingerprint, "tokens": self.tokenized.fingerprint,
                       "vocab_size": self.vocab_size,
                       "scoring": data.batch_recipe(self.tokenizer, self.objective, self.config.seq_len),
                       "validation": self.validation().size()}
        if self.parent is not None:  # the tokenizer is the parent's (or --tokenizer's), not one growbench trained
            fingerprint["tokenizer"] = {"from": self.config.tokenizer_dir or self.parent.source,
                                        "fingerprint": data.tokenizer_fingerprint(self.tokenizer),
                                        "tokens": len(self.tokenizer)}
        return fingerprint


def prepare_data(pair: Pair, config: DataConfig, parent: ParentCheckpoint | None = None) -> Prepared:
    """The corpus and its token ids. With a `parent` checkpoint the tokenizer is the parent's own (or the one in
    `config.tokenizer_dir`), checked against the parent's vocabulary and positions before the corpus is read."""
    if parent is None:
        corpus = data.load_corpus(config.corpus)
        tokenizer = data.load_tokenizer(corpus, pair.family.tokenizer_kind, config.vocab_size, config.tokenizer_dir)
    else:
        parent.check_positions(config.seq_len)
        tokenizer = parent.tokenizer(config.tokenizer_dir)
        corpus = data.load_corpus(config.corpus)
    return Prepared(data.tokenize_corpus(corpus, tokenizer), corpus, pair.family.objective, config, parent)




DTYPES = ("auto", "fp32", "tf32", "bf16")
"""--dtype: fp32 strict float32 (TF32 off on CUDA); tf32 float32 on TF32 tensor cores (CUDA only); bf16 autocast.
auto: bf16 on CUDA, fp32 on CPU."""


def resolve_device(name: str, dtype: str) -> tuple[torch.device, torch.dtype | None, bool]:
    """(device, autocast dtype or None, whether float32 matrix products may use TF32) of --device and --dtype.
    tf32 on a CPU is bad input: TF32 is a tensor-core format, and a CPU run asked for it would silently be fp32."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise BenchError(f"unknown device {name!r}; use auto, cpu or cuda")
    device = distributed.rank_device(torch.device(name))  # under torchrun: this rank's GPU
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype not in DTYPES[1:]:
        raise BenchError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES[:-1])} or {DTYPES[-1]}")
    if dtype == "tf32" and device.type != "cuda":
        raise BenchError("--dtype tf32 needs a CUDA device (TF32 is a tensor-core format); use fp32 on a CPU")
    return device, torch.bfloat16 if dtype == "bf16" else None, dtype == "tf32"


def check_micro_batch(micro_batch: int | None, batch_size: int) -> None:
    """--micro-batch: a positive whole number of rows that divides the batch (every micro-batch the same shape, so
    each step costs `accumulation` times the one the collectors measure); at most the batch (the whole batch: no
    accumulation)."""
    if micro_batch is None:
        return
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise BenchError(f"--micro-batch must be a positive whole number of rows, got {micro_batch!r}")
    if micro_batch > batch_size:
        raise BenchError(f"--micro-batch {micro_batch} is larger than the batch ({batch_size} rows)")
    if batch_size % micro_batch:
        raise BenchError(f"--micro-batch {micro_batch} does not divide the batch ({batch_size} rows); "
                         f"use a divisor of {batch_size}")


def loop_config(pair: Pair, device: str = "auto", dtype: str = "auto", lr: float | None = None,
                eval_points: int = 20, progress_bar: bool = True, label: str = "",
                micro_batch: int | None = None, batch_size: int | None = None) -> LoopConfig:
    """The loop's settings: the optimizer and schedule of the pair's recipe, `lr` (None: the recipe's) its peak
    learning rate. `micro_batch` (rows; None: the pair's default, on every device) is checked against
    `batch_size` (None: the pair's). On CUDA, TF32 is switched on for tf32 and off for fp32 and bf16 (process-wide:
    one run's settings per process)."""
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0):
        raise BenchError(f"the learning rate (--lr) must be a finite number above 0, got {lr!r}")
    if isinstance(eval_points, bool) or not isinstance(eval_points, int) or eval_points < 1:
        raise BenchError(f"eval_points must be a whole number of at least 1, got {eval_points!r}")
    check_micro_batch(micro_batch, pair.defaults.batch_size if batch_size is None else batch_size)
    distributed.check_batch(pair.defaults.batch_size if batch_size is None else batch_size,
                            pair.defaults.micro_batch if micro_batch is None else micro_batch)
    torch_device, autocast, tf32 = resolve_device(device, dtype)
    set_matmul_precision(torch_device, tf32)
    settings = pair.defaults.recipe.optim_settings()
    optim = OptimConfig(**(settings if lr is None else {**settings, "lr": lr}))
    return LoopConfig(optim=optim, eval_points=eval_points, device=torch_device, autocast_dtype=autocast,
                      micro_batch=pair.defaults.micro_batch if micro_batch is None else micro_batch,
                      progress_bar=progress_bar, label=label)


def plain_phase(size: Size, prepared: Prepared, seed: int) -> Phase:
    model = size.build(prepared.vocab_size, prepared.config.seq_len, seed, prepared.pad_token_id, prepared.base)
    return Phase("train", model)


def plain_phases(size: Size, prepared: Prepared, seed: int) -> Iterator[Phase]:
    """Training `size` from scratch, as a method's phases (a parent's pretraining)."""
    yield plain_phase(size, prepared, seed)


def scratch_step(size: Size, prepared: Prepared, loop: LoopConfig) -> tuple[float, float]:
    """(executed FLOPs, seconds) of one training step of `size` from scratch: the unit of --budget-steps."""
    phase = plain_phase(size, prepared, seed=0)
    batch = prepared.source(0).batch(0)
    return step_flops(phase, batch, loop), step_seconds(phase, batch, loop)




def standalone(size: Size, corpus, tokenizer_dir, device, dtype, lr, progress_bar, label,
               parent: ParentCheckpoint | None = None, micro_batch: int | None = None
               ) -> tuple[Prepared, LoopConfig, dict]:
    """Data, loop settings and prices for a command that works on one size (pretrain, grow; `parent`: the
    checkpoint grown, whose tokenizer and config the data and models take; `micro_batch`: rows, None = the
    size's default)."""
    defaults = defaults_for(size)
    prepared_config = DataConfig(corpus, tokenizer_dir, defaults.seq_len, defaults.batch_size, defaults.vocab_size)
    pair = Pair(size, size)
    loop = loop_config(pair, device, dtype, lr, progress_bar=progress_bar, label=label, micro_batch=micro_batch)
    return prepare_data(pair, prepared_config, parent), loop, load_prices()
