"""The context-free reference lines, on corpora whose answer is known, in a real comparison's manifest, and the
warning when τ is not below them."""

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from bench.cli import main
from bench.data import TokenizedCorpus, reference_losses, reference_warning, validation_set
from bench.objective import IGNORE

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = 20


def _tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: the five BERT specials (ids 0-4), then WORDS ordinary tokens."""
    vocab = {token: index for index, token in enumerate(SPECIALS + [f"w{k}" for k in range(WORDS)])}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                                   pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]")


def _zipf() -> np.ndarray:
    """A skewed distribution over the ordinary ids (zero on the specials)."""
    weights = np.zeros(len(SPECIALS) + WORDS)
    weights[len(SPECIALS):] = 1.0 / np.arange(1, WORDS + 1)
    return weights / weights.sum()


def _lines(train: np.ndarray, val: np.ndarray, objective: str, seq_len: int = 64):
    tokenizer = _tokenizer()
    validation = validation_set(TokenizedCorpus(train, val, tokenizer, "test"), objective, seq_len, 16).batches
    return reference_losses(train, validation, tokenizer, objective, len(tokenizer)), validation


def test_unigram_of_iid_tokens_is_their_cross_entropy_under_the_true_distribution():
    rng = np.random.default_rng(0)
    truth = _zipf()
    train, val = (rng.choice(len(truth), size=n, p=truth).astype(np.int32) for n in (200_000, 20_000))
    lines, validation = _lines(train, val, "causal")
    targets = np.concatenate([batch["labels"][:, 1:].reshape(-1).numpy() for batch in validation])
    assert lines["predictions"] == len(targets) == sum(len(batch["labels"]) for batch in validation) * 63
    assert lines["unigram"] == pytest.approx(-np.log(truth[targets]).mean(), abs=0.01)
    entropy = -(truth[truth > 0] * np.log(truth[truth > 0])).sum()
    assert lines["unigram"] == pytest.approx(entropy, abs=0.05)
    assert lines["bigram"] == pytest.approx(lines["unigram"], abs=0.02)  # no context to learn: no gain, no overfit


def test_bigram_of_a_deterministic_chain_is_near_zero():
    chain = len(SPECIALS) + np.arange(WORDS, dtype=np.int32)  # w0 w1 ... w19 w0 w1 ...: the next token is certain
    train, val = np.tile(chain, 5_000), np.tile(np.roll(chain, 7), 300)
    lines, _ = _lines(train, val, "causal")
    assert lines["bigram"] < 1e-3
    assert lines["unigram"] == pytest.approx(math.log(WORDS), abs=0.01)


def test_bigram_is_witten_bell_interpolated_to_the_unigram():
    """Training w0 w1 w0 w2: after w0 two pairs of two kinds, so p(w1 | w0) = (1 + 2 u(w1)) / (2 + 2); w3 was never
    a previous token, so p(w1 | w3) = u(w1), with u(w1) = (1 + 1) / (4 + 25) add-one smoothed over the 25 ids."""
    w0, w1, w2, w3 = (len(SPECIALS) + k for k in range(4))
    train = np.array([w0, w1, w0, w2], dtype=np.int32)
    unigram = 2 / 29
    for pair, probability in (([w0, w1], (1 + 2 * unigram) / 4), ([w3, w1], unigram)):
        batch = {"input_ids": torch.tensor([pair]), "labels": torch.tensor([pair])}
        lines = reference_losses(train, [batch], _tokenizer(), "causal", len(SPECIALS) + WORDS)
        assert lines["predictions"] == 1 and lines["unigram"] == pytest.approx(-math.log(unigram))
        assert lines["bigram"] == pytest.approx(-math.log(probability))


@pytest.fixture(scope="module")
def masked_iid():
    """(train ids, validation batches) of i.i.d. tokens from `_zipf` (in train every tenth one [SEP]), the validation
    set masked by the real masking (80% [MASK], 10% a random ordinary id, 10% unchanged) under several masks: about
    100,000 predictions."""
    rng = np.random.default_rng(1)
    truth = _zipf()
    train, val = (rng.choice(len(truth), size=n, p=truth).astype(np.int32) for n in (400_000, 2048 * 126))
    train[::10] = SPECIALS.index("[SEP]")  # documents end with [SEP], which masking never scores
    tokenized = TokenizedCorpus(train, val, _tokenizer(), "test")
    return train, validation_set(tokenized, "mlm", 128, 16, min_predictions=100_000).batches


def test_unigram_copy_is_the_expected_loss_of_bayes_under_bert_masking(masked_iid):
    """unigram_copy is the expected loss of the predictor that knows u and the masking recipe, and below unigram."""
    train, validation = masked_iid
    lines = reference_losses(train, validation, _tokenizer(), "mlm", len(SPECIALS) + WORDS)
    assert lines["predictions"] == sum(int((batch["labels"] != IGNORE).sum()) for batch in validation) > 90_000
    u = _zipf()[len(SPECIALS):]
    keep = u / (u + 1 / WORDS)  # P(unchanged | x shown)
    copied = keep[:, None] * np.eye(WORDS) + (1 - keep)[:, None] * u[None, :]  # copied[x, t] = p(t | x shown)
    # [MASK] (80%): -log u(t); t unchanged (10%): -log p(t | t); a random x shown for t (10%): -log p(t | x)
    expected = (0.8 * -(u * np.log(u)).sum() + 0.1 * -(u * np.log(np.diag(copied))).sum()
                + 0.1 * -(u[None, :] * np.log(copied)).sum() / WORDS)
    assert lines["unigram_copy"] == pytest.approx(expected, abs=0.015)
    assert lines["unigram"] == pytest.approx(-(u * np.log(u)).sum(), abs=0.015)
    assert lines["unigram_copy"] < lines["unigram"] - 0.1


@pytest.mark.parametrize("word", [0, 4, 19])
def test_the_copy_probability_is_how_often_a_visible_token_is_the_target(masked_iid, word):
    """Bayes against the real masking: the probability unigram_copy gives the visible token itself is the share of
    the positions showing it whose target it is (scored alone: the loss of those positions is -log of it)."""
    train, validation = masked_iid
    token = len(SPECIALS) + word
    shown = [(batch["input_ids"] == token) & (batch["labels"] != IGNORE) for batch in validation]
    copies = [here & (batch["labels"] == token) for here, batch in zip(shown, validation)]
    count = sum(int(here.sum()) for here in shown)
    observed = sum(int(here.sum()) for here in copies) / count
    only_copies = [{"input_ids": batch["input_ids"], "labels": torch.where(here, batch["labels"], IGNORE)}
                   for here, batch in zip(copies, validation)]
    given = math.exp(-reference_losses(train, only_copies, _tokenizer(), "mlm", len(SPECIALS) + WORDS)["unigram_copy"])
    assert given == pytest.approx(observed, abs=4 * math.sqrt(observed * (1 - observed) / count))


def test_the_warning_names_tau_the_line_and_the_gap_only_when_tau_is_not_below_it():
    mlm = {"unigram": 6.658, "unigram_copy": 6.168, "predictions": 2314}
    warning = reference_warning(6.235, mlm)
    assert warning is not None and all(text in warning for text in ("6.2350", "unigram_copy", "6.1680", "0.0670"))
    assert reference_warning(6.0, mlm) is None
    causal = {"unigram": 7.0, "bigram": 5.1, "predictions": 16128}
    assert "bigram line 5.1000" in reference_warning(5.5, causal) and reference_warning(5.0, causal) is None
    assert reference_warning(6.5, None) is None  # a run directory made before the lines were recorded
    assert reference_warning(math.nan, mlm) is None  # no target (no finished scratch run)


@pytest.mark.slow
def test_a_comparison_records_the_lines_in_its_manifest_and_warns_at_its_end(corpus, tmp_path, monkeypatch, capsys):
    from bench import calibration

    monkeypatch.setattr(calibration, "ROUNDS", 1)  # the calibration's statistics are not what this tests
    monkeypatch.setattr(calibration, "REPEATS", 1)
    out = tmp_path / "run"
    assert main(["compare", "--methods", "scratch", "--seeds", "1", "--budget-steps", "2", "--eval-points", "1",
                 "--corpus", str(corpus), "--out", str(out), "--no-progress"]) == 0
    lines = json.loads((out / "manifest.json").read_text())["reference_lines"]
    assert set(lines) == {"unigram", "unigram_copy", "predictions", "how"}
    assert all(math.isfinite(lines[name]) and lines[name] > 0 for name in ("unigram", "unigram_copy"))
    assert lines["predictions"] > 0
    assert "is not below the context-free unigram_copy line" in capsys.readouterr().err  # 2 steps: τ is far above
