"""Batches: training batches that are a pure function of (seed, step), so that all methods and seeds see
the same data order, and the fixed validation set, with BERT's masking for masked-LM.

Every row of a masked-LM batch has the same number of masked (scored) positions, as in BERT's own data
(`max_predictions_per_seq`), not a random 15% of them: the MLM head runs on the scored positions only, so with a
fixed count every step, and every micro-batch of equal rows, executes the same FLOPs, and the FLOPs the loop
counts on a phase's first batch are what each of its steps executes."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from bench.data.tokenizer import TokenizedCorpus
from bench.errors import BenchError
from bench.objective import IGNORE, scored_count

MLM_PROBABILITY = 0.15  # BERT's share of the maskable positions of a row that the loss scores
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the scored positions: the mask token, a random token; the rest stay
VALIDATION_SEED = 0  # the validation masks are the same for every run: pass p is masked with VALIDATION_SEED + p
MIN_VALIDATION_PREDICTIONS = 10_000
"""Scored predictions the validation set aims at: a prediction's loss spreads by ~2.4 nats, so one evaluation's
standard error is then ~0.024 nats (~0.05 with the 2,300 of 256 blocks of 64 tokens under one mask)."""
MAX_VALIDATION_MASKS = 8  # at most this many fixed masks of each block where the split is too short for the minimum


def masked_per_row(maskable: int, mlm_probability: float = MLM_PROBABILITY) -> int:
    """Masked positions per row of `maskable` positions: round(mlm_probability x maskable), at least 1, as BERT's
    create_pretraining_data rounds them (Python's round)."""
    return max(1, round(mlm_probability * maskable))


def special_ids(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """One boolean per token id of the tokenizer: True for its special tokens, which masking never picks or draws."""
    is_special = torch.zeros(len(tokenizer), dtype=torch.bool)
    is_special[sorted(tokenizer.all_special_ids)] = True
    return is_special


def mask_tokens(
    input_ids: torch.Tensor, tokenizer: PreTrainedTokenizerFast, generator: torch.Generator, predictions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: in every row, `predictions` non-special positions chosen uniformly (all of them in a row
    with fewer); of those 80% become the mask token, 10% a random non-special token, 10% stay. Labels are the
    original ids there, -100 elsewhere. The random draws have fixed shapes (a score per position, whose top
    `predictions` per row are chosen), so the result depends only on the ids and the generator's state."""
    is_special = special_ids(tokenizer)
    ordinary_ids = torch.nonzero(~is_special).squeeze(1)
    special = is_special[input_ids]
    scores = torch.rand(input_ids.shape, generator=generator).masked_fill(special, -1.0)
    top = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :predictions]
    chosen = torch.zeros_like(special).scatter_(1, top, True) & ~special
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), input_ids.shape, generator=generator)]
    masked = torch.where(chosen & (action < MASK_SHARE), tokenizer.mask_token_id, input_ids)
    masked = torch.where(chosen & (action >= 1 - RANDOM_SHARE), random_ids, masked)
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

    @property
    def scored_per_row(self) -> int:
        """Predictions the loss scores in a row of full length: the masked ones (MLM), every next token (causal)."""
        return masked_per_row(self.block_len) if self.objective == "mlm" else self.seq_len - 1

    def recipe(self) -> dict:
        """What decides which predictions are scored, for the data fingerprint."""
        if self.objective == "causal":
            return {"scored": "every next token", "scored_per_row": self.scored_per_row}
        return {"scored": "fixed count per row", "mlm_probability": MLM_PROBABILITY,
                "scored_per_row": self.scored_per_row, "mask_share": MASK_SHARE, "random_share": RANDOM_SHARE}

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
        input_ids, labels = mask_tokens(input_ids, self.tokenizer, generator, self.scored_per_row)
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


def batch_recipe(tokenizer: PreTrainedTokenizerFast, objective: str, seq_len: int) -> dict:
    """How the batches of `objective` at `seq_len` are scored (masking recipe, predictions per row)."""
    return _Framing(tokenizer, objective, seq_len).recipe()


def scored_predictions(batches: Iterable[dict[str, torch.Tensor]], causal: bool) -> int:
    """Predictions the LM loss scores in all of `batches`."""
    return sum(scored_count(batch["labels"], causal) for batch in batches)


@dataclass(frozen=True)
class ValidationSet:
    """The fixed evaluation set: the first `blocks` blocks of the validation split, each scored under `masks` fixed
    masks (rows mask-major), in batches of at most the run's batch size; `predictions` scored in all."""

    batches: list[dict[str, torch.Tensor]]
    blocks: int
    masks: int
    predictions: int

    def size(self) -> dict[str, int]:
        return {"blocks": self.blocks, "masks": self.masks, "predictions": self.predictions}


def validation_set(
    tokenized: TokenizedCorpus, objective: str, seq_len: int, batch_size: int,
    min_predictions: int = MIN_VALIDATION_PREDICTIONS, max_masks: int = MAX_VALIDATION_MASKS,
) -> ValidationSet:
    """The fixed evaluation set, the same whatever the run's seed: as many blocks as `min_predictions` needs
    (rounded up to whole batches, so that every batch's mean loss weighs as many predictions), at most the whole
    split; where one mask of the whole split scores fewer, each block again under further fixed masks (masked-LM;
    a causal LM scores every position already), up to `max_masks` masks, so fewer only on a short split."""
    framing = _Framing(tokenized.tokenizer, objective, seq_len)
    available = framing.block_count(tokenized.val)
    if available == 0:
        raise BenchError(f"the validation text has {len(tokenized.val)} tokens, less than one sequence of {seq_len}")
    needed = math.ceil(min_predictions / framing.scored_per_row)
    blocks = min(available, math.ceil(needed / batch_size) * batch_size)
    masks = 1 if objective == "causal" else min(max_masks, math.ceil(needed / blocks))
    passes = [framing.batch(tokenized.val, range(blocks), torch.Generator().manual_seed(VALIDATION_SEED + mask))
              for mask in range(masks)]
    batch = {name: torch.cat([one[name] for one in passes]) for name in passes[0]}
    batches = [{name: tensor[start:start + batch_size] for name, tensor in batch.items()}
               for start in range(0, blocks * masks, batch_size)]
    return ValidationSet(batches, blocks, masks, scored_predictions(batches, objective == "causal"))


