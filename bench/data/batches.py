"""Batches: training batches that are a pure function of (seed, step), so that all methods and seeds see
the same data order, and the fixed validation set, with BERT's masking for masked-LM."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from bench.data.tokenizer import TokenizedCorpus
from bench.errors import BenchError
from bench.objective import IGNORE

VALIDATION_SEED = 0  # the validation masks are the same for every run


def mask_tokens(
    input_ids: torch.Tensor, tokenizer: PreTrainedTokenizerFast, generator: torch.Generator, mlm_probability: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: pick `mlm_probability` of the non-special positions; of those 80% become the mask
    token, 10% a random non-special token, 10% stay. Labels are the original ids there, -100 elsewhere.
    The random draws have fixed shapes, so the result depends only on the ids and the generator's state."""
    vocab_size = len(tokenizer)
    is_special = torch.zeros(vocab_size, dtype=torch.bool)
    is_special[sorted(tokenizer.all_special_ids)] = True
    ordinary_ids = torch.nonzero(~is_special).squeeze(1)
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~is_special[input_ids]
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), input_ids.shape, generator=generator)]
    masked = torch.where(chosen & (action < 0.8), tokenizer.mask_token_id, input_ids)
    masked = torch.where(chosen & (action >= 0.9), random_ids, masked)
    labels = torch.where(chosen, input_ids, IGNORE)
    return masked, labels


@dataclass(frozen=True)
class _Framing:
    """How blocks of the token stream become model inputs: [CLS] block [SEP] (<s> block </s>) for MLM,
    the bare block for causal LM."""

    tokenizer: PreTrainedTokenizerFast
    objective: str
    seq_len: int

    def __post_init__(self):
        if self.objective not in ("mlm", "causal"):
            raise ValueError(f"objective must be 'mlm' or 'causal', got {self.objective!r}")
        if self.seq_len < (3 if self.objective == "mlm" else 2):
            raise BenchError(f"sequence length {self.seq_len} is too short")
        if self.objective == "mlm" and None in (self.tokenizer.mask_token_id, self._start_id, self._end_id):
            raise BenchError("masked-LM needs a tokenizer with mask, cls/bos and sep/eos tokens")

    @property
    def _start_id(self) -> int | None:
        tokenizer = self.tokenizer
        return tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id

    @property
    def _end_id(self) -> int | None:
        tokenizer = self.tokenizer
        return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    @property
    def block_len(self) -> int:
        """Stream tokens per sequence."""
        return self.seq_len - 2 if self.objective == "mlm" else self.seq_len

    def block_count(self, tokens: np.ndarray) -> int:
        return len(tokens) // self.block_len

    def batch(self, tokens: np.ndarray, block_indices: Iterable[int], generator: torch.Generator):
        length = self.block_len
        rows = np.stack([tokens[index * length:(index + 1) * length] for index in block_indices])
        input_ids = torch.from_numpy(rows.astype(np.int64))
        if self.objective == "causal":
            return {"input_ids": input_ids, "labels": input_ids.clone()}
        column = torch.ones(len(input_ids), 1, dtype=torch.long)
        input_ids = torch.cat([column * self._start_id, input_ids, column * self._end_id], dim=1)
        input_ids, labels = mask_tokens(input_ids, self.tokenizer, generator)
        return {"input_ids": input_ids, "labels": labels}


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, block_count: int) -> np.ndarray:
    """The order of the blocks in one epoch: a fresh permutation per (seed, epoch)."""
    return np.random.default_rng(_seed(seed, 0, epoch)).permutation(block_count)


class BatchStream:
    """Training batches of `batch_size` blocks of `seq_len` tokens, a pure function of (seed, step).

    Batch s takes positions s*B .. s*B+B-1 of an endless sequence of epochs, each epoch a permutation
    of the non-overlapping blocks seeded by (seed, epoch); its masks come from a generator seeded by
    (seed, step). Nothing depends on which batches were asked for before."""

    def __init__(self, tokens: np.ndarray, tokenizer, objective: str, seq_len: int, batch_size: int, seed: int):
        self.tokens = tokens
        self.framing = _Framing(tokenizer, objective, seq_len)
        self.batch_size = batch_size
        self.seed = seed
        self.block_count = self.framing.block_count(tokens)
        if self.block_count == 0:
            raise BenchError(f"the training text has {len(tokens)} tokens, less than one sequence of {seq_len}")

    def block_indices(self, step: int) -> np.ndarray:
        positions = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(positions, self.block_count)
        return np.array([_epoch_order(self.seed, e, self.block_count)[o] for e, o in zip(epochs, offsets)])

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(_seed(self.seed, 1, step))
        return self.framing.batch(self.tokens, self.block_indices(step), generator)


def validation_batches(
    tokenized: TokenizedCorpus, objective: str, seq_len: int, batch_size: int, n_blocks: int = 256
) -> list[dict[str, torch.Tensor]]:
    """The fixed evaluation set: the first `n_blocks` blocks of the validation split (fewer if it is
    shorter), masked with a fixed generator, whatever the run's seed."""
    framing = _Framing(tokenized.tokenizer, objective, seq_len)
    count = min(n_blocks, framing.block_count(tokenized.val))
    if count == 0:
        raise BenchError(f"the validation text has {len(tokenized.val)} tokens, less than one sequence of {seq_len}")
    batch = framing.batch(tokenized.val, range(count), torch.Generator().manual_seed(VALIDATION_SEED))
    return [
        {name: tensor[start:start + batch_size] for name, tensor in batch.items()}
        for start in range(0, count, batch_size)
    ]
