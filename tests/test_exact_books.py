"""Exact books: every masked-LM row scores the same number of predictions, so the FLOPs the loop charges are the
FLOPs every step executes, and every seed takes the same steps for one budget; and the fixed validation set scores
at least `MIN_VALIDATION_PREDICTIONS` predictions where the split allows it."""

import numpy as np
import pytest
import torch

from bench import data
from bench.collectors import CollectorSet
from bench.collectors.flops import count_executed_step
from bench.objective import IGNORE
from bench.runner.prepare import DataConfig, Prepared, plain_phase, prepare_data
from bench.sizes import get_size, parse_pair
from bench.step import micro_batches
from bench.train import Budget, LoopConfig, step_flops, train_phases

PAIR = "bert-nano:bert-micro"  # seq 64, batch 16: 62 stream positions a row, 9 of them masked


@pytest.fixture(scope="module")
def prepared(small_corpus) -> Prepared:
    pair = parse_pair(PAIR)
    defaults = pair.defaults
    config = DataConfig([str(small_corpus)], None, defaults.seq_len, defaults.batch_size, defaults.vocab_size)
    return prepare_data(pair, config)


def ordinary_ids(tokenizer, count: int, seed: int = 0) -> np.ndarray:
    """`count` random non-special token ids: a validation split of `count` tokens with no document separators."""
    ordinary = np.setdiff1d(np.arange(len(tokenizer)), tokenizer.all_special_ids)
    return np.random.default_rng(seed).choice(ordinary, count).astype(np.int32)


def with_validation_blocks(prepared: Prepared, blocks: int, block_len: int) -> data.TokenizedCorpus:
    tokenized = prepared.tokenized
    return data.TokenizedCorpus(tokenized.train, ordinary_ids(tokenized.tokenizer, blocks * block_len),
                                tokenized.tokenizer, f"synthetic-{blocks}")


# --------------------------------------------------------------------------- a fixed count of masked positions


def test_every_row_of_an_mlm_batch_scores_exactly_k_positions(prepared):
    k = data.masked_per_row(62)
    assert k == 9 == round(0.15 * 62)
    stream = data.BatchStream(prepared.tokenized.train, prepared.tokenizer, "mlm", 64, 16, seed=3)
    for step in range(5):
        labels = stream.batch(step)["labels"]
        assert ((labels != IGNORE).sum(dim=1) == k).all()


def test_a_row_with_fewer_maskable_positions_than_k_scores_all_of_them(prepared):
    tokenizer = prepared.tokenizer
    input_ids = torch.from_numpy(ordinary_ids(tokenizer, 4 * 20).astype(np.int64)).reshape(4, 20)
    input_ids[1, 3:] = tokenizer.pad_token_id  # 3 ordinary positions left, fewer than the 5 asked for
    masked, labels = data.mask_tokens(input_ids, tokenizer, torch.Generator().manual_seed(0), 5)
    assert (labels != IGNORE).sum(dim=1).tolist() == [5, 3, 5, 5]
    assert (labels[1, :3] == input_ids[1, :3]).all() and (masked[1, 3:] == tokenizer.pad_token_id).all()


def test_the_same_generator_state_gives_the_same_batch_and_other_steps_differ(prepared):
    tokenized = prepared.tokenized
    one, again = (data.BatchStream(tokenized.train, prepared.tokenizer, "mlm", 64, 16, seed=1) for _ in range(2))
    for step in (0, 4):
        first, second = one.batch(step), again.batch(step)
        assert torch.equal(first["input_ids"], second["input_ids"]) and torch.equal(first["labels"], second["labels"])
    assert not torch.equal(one.batch(0)["labels"] != IGNORE, one.batch(1)["labels"] != IGNORE)
    ids = torch.from_numpy(ordinary_ids(prepared.tokenizer, 8 * 30).astype(np.int64)).reshape(8, 30)
    chosen = [data.mask_tokens(ids, prepared.tokenizer, torch.Generator().manual_seed(seed), 4)[1] != IGNORE
              for seed in (7, 7, 8)]
    assert torch.equal(chosen[0], chosen[1]) and not torch.equal(chosen[0], chosen[2])


# --------------------------------------------------------------------------- the validation set's size


def test_the_validation_set_reaches_the_minimum_in_whole_batches_on_a_split_big_enough(prepared):
    tokenized = with_validation_blocks(prepared, 3000, 62)
    validation = data.validation_set(tokenized, "mlm", 64, 16)
    assert validation.masks == 1 and validation.blocks == 1120  # ceil(10,000 / 9) = 1112 blocks, in 70 batches
    assert validation.predictions == 1120 * 9 >= data.MIN_VALIDATION_PREDICTIONS
    assert validation.predictions == data.scored_predictions(validation.batches, causal=False)
    assert [len(batch["input_ids"]) for batch in validation.batches] == [16] * 70
    again = data.validation_set(tokenized, "mlm", 64, 16)
    for a, b in zip(validation.batches, again.batches, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_a_short_split_is_scored_under_further_fixed_masks(prepared):
    validation = data.validation_set(with_validation_blocks(prepared, 500, 62), "mlm", 64, 16)
    assert (validation.blocks, validation.masks, validation.predictions) == (500, 3, 500 * 3 * 9)
    labels = torch.cat([batch["labels"] for batch in validation.batches])
    ids = torch.cat([batch["input_ids"] for batch in validation.batches])
    assert labels.shape[0] == 1500
    first, second = labels[:500] != IGNORE, labels[500:1000] != IGNORE
    assert not torch.equal(first, second)  # each pass its own mask of the same blocks
    assert torch.equal(ids[:500][~first & ~second], ids[500:1000][~first & ~second])


def test_a_split_too_short_for_the_minimum_says_how_many_it_scores(prepared):
    validation = data.validation_set(with_validation_blocks(prepared, 100, 62), "mlm", 64, 16)
    assert validation.size() == {"blocks": 100, "masks": data.MAX_VALIDATION_MASKS,
                                 "predictions": 100 * data.MAX_VALIDATION_MASKS * 9}
    assert validation.predictions < data.MIN_VALIDATION_PREDICTIONS


def test_causal_lm_needs_only_enough_blocks(prepared):
    big = data.validation_set(with_validation_blocks(prepared, 500, 64), "causal", 64, 16)
    assert (big.blocks, big.masks, big.predictions) == (160, 1, 160 * 63)  # ceil(10,000 / 63) = 159 blocks
    short = data.validation_set(with_validation_blocks(prepared, 40, 64), "causal", 64, 16)
    assert (short.blocks, short.masks, short.predictions) == (40, 1, 40 * 63)


def test_the_data_fingerprint_records_the_scoring_and_the_validation_size(prepared):
    fingerprint = prepared.fingerprint()
    assert fingerprint["scoring"]["scored_per_row"] == 9 and fingerprint["scoring"]["scored"] == "fixed count per row"
    assert fingerprint["validation"] == prepared.validation().size()
    assert fingerprint["validation"]["predictions"] == data.scored_predictions(prepared.source(0).validation, False)


# --------------------------------------------------------------------------- the books


def run_scratch(prepared: Prepared, seed: int, budget: Budget, micro_batch: int | None = None) -> dict:
    """bert-nano from scratch through the loop; its one phase row."""
    source = prepared.source(seed)
    config = LoopConfig(progress_bar=False, eval_points=1, micro_batch=micro_batch)
    result = train_phases(iter([plain_phase(get_size("bert-nano"), prepared, seed)]), budget, source, config,
                          CollectorSet([]))
    (row,) = result.phases
    return row


def one_step_flops(prepared: Prepared) -> float:
    return step_flops(plain_phase(get_size("bert-nano"), prepared, 0), prepared.source(0).batch(0), LoopConfig())


@pytest.mark.parametrize("micro_batch", [None, 4])
def test_the_flops_charged_are_the_flops_every_step_executes(prepared, micro_batch):
    budget = Budget("flops", 5 * one_step_flops(prepared))
    row = run_scratch(prepared, seed=1, budget=budget, micro_batch=micro_batch)
    assert row["steps"] == 5
    counter = plain_phase(get_size("bert-nano"), prepared, seed=1)
    counter.prepare()
    source = prepared.source(1)
    executed = []  # each step's actual batch, micro-batch by micro-batch
    for step in range(row["steps"]):
        chunks = micro_batches(source.batch(step), micro_batch)
        executed.append(sum(count_executed_step(counter, chunk, step) for chunk in chunks))
    assert row["flops_executed"] == sum(executed)
    assert len(set(executed)) == 1


def test_every_seed_takes_the_same_steps_for_one_flops_budget(prepared):
    budget = Budget("flops", 6.4 * one_step_flops(prepared))
    rows = [run_scratch(prepared, seed, budget) for seed in range(3)]
    assert [row["steps"] for row in rows] == [6, 6, 6]  # the count nearest to the budget
    assert len({row["flops_executed"] for row in rows}) == 1
