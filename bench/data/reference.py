"""Context-free reference lines: the validation loss a predictor reaches from token frequencies alone.

Each line is a mean cross-entropy in nats, with statistics from the training split only, scored on exactly the
predictions the fixed validation set scores (the positions and targets of `bench.objective.with_scored_positions`,
whatever masking chose them). A comparison whose target τ is not below its line measures how fast models learn
token frequencies, not how fast they learn the language.

- `unigram`: p(t) = (c(t) + 1) / (N + |S|), the training split's counts c of the ids S a prediction can have (N in
  all), add-one (Laplace) smoothed over S so that an unseen token has a finite loss. S is every id of the model's
  vocabulary for causal LM; for masked LM the ordinary (non-special) ids of the tokenizer, the only ones masking
  scores.
- `unigram_copy` (masked LM): the Bayes-optimal predictor that also sees the input token at the scored position.
- `bigram` (causal LM): p(t | previous token), Witten–Bell interpolated to the unigram.
- `predictions`: how many predictions were scored.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from bench.data.batches import MASK_SHARE, RANDOM_SHARE, special_ids
from bench.objective import with_scored_positions

REFERENCE_HOW = ("context-free predictors with statistics from the training split, scored on the validation set's "
                 "own scored predictions (mean cross-entropy, nats)")
"""One line on how the reference lines were made, for the manifest."""


def _support(tokenizer: PreTrainedTokenizerFast, objective: str, vocab_size: int) -> np.ndarray:
    """Which ids a scored prediction can be (boolean, one per model id): every id for causal LM; for masked LM the
    ordinary ids, as `bench.data.batches.mask_tokens` picks and draws them."""
    if objective == "causal":
        return np.ones(vocab_size, dtype=bool)
    support = np.zeros(vocab_size, dtype=bool)
    support[:len(tokenizer)] = ~special_ids(tokenizer).numpy()
    return support


def _unigram(train_ids: np.ndarray, support: np.ndarray) -> np.ndarray:
    """The training split's token distribution over `support`, add-one smoothed (zero outside `support`)."""
    counts = np.bincount(train_ids, minlength=len(support)).astype(np.float64) + 1.0
    counts[~support] = 0.0
    return counts / counts.sum()


def _copy_probability(unigram: np.ndarray, shown: np.ndarray, targets: np.ndarray, ordinary: int) -> np.ndarray:
    """p(target | the input shows `shown`) under BERT's masking (`bench.data.batches`: MASK_SHARE the mask token,
    RANDOM_SHARE a random ordinary id, the rest unchanged; 80/10/10), with the target drawn from `unigram`.

    A visible x is the target left unchanged (share q_u: mass q_u u(x) on t = x) or a random ordinary id (share
    q_r: mass q_r u(t)/V for every t, V the ordinary ids), so P(t | x) ∝ q_u u(x) [t = x] + q_r u(t)/V, i.e.
    p(t | x) = π_x [t = x] + (1 − π_x) u(t) with π_x = q_u u(x) / (q_u u(x) + q_r/V) (= u(x) / (u(x) + 1/V) at
    10% each). The mask token, a special id outside the unigram's support (u = 0), gets π = 0: p = u."""
    unchanged = 1.0 - MASK_SHARE - RANDOM_SHARE
    keep = unchanged * unigram[shown] / (unchanged * unigram[shown] + RANDOM_SHARE / ordinary)
    return keep * (targets == shown) + (1.0 - keep) * unigram[targets]


def _bigram_probability(train_ids: np.ndarray, unigram: np.ndarray, previous: np.ndarray,
                        targets: np.ndarray) -> np.ndarray:
    """Witten–Bell: p(t | h) = (c(h, t) + T(h) u(t)) / (c(h) + T(h)), T(h) the distinct tokens seen after h, from
    the training split's consecutive pairs (sparse: the distinct pair codes h·V + t); u(t) for an unseen h."""
    vocab = len(unigram)
    histories = train_ids[:-1]
    pairs, pair_counts = np.unique(histories * vocab + train_ids[1:], return_counts=True)
    history_counts = np.bincount(histories, minlength=vocab)[previous]
    history_types = np.bincount(pairs // vocab, minlength=vocab)[previous]
    query = previous * vocab + targets
    found = np.searchsorted(pairs, query).clip(max=len(pairs) - 1)
    together = np.where(pairs[found] == query, pair_counts[found], 0)
    seen = history_counts > 0
    smoothed = (together + history_types * unigram[targets]) / np.maximum(history_counts + history_types, 1)
    return np.where(seen, smoothed, unigram[targets])


def _scored(validation: list[dict[str, torch.Tensor]], causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """(input token at each scored position, its target) over the validation batches: for causal LM the input is
    the previous token of the target; for masked LM the (possibly masked or replaced) token at the target's place."""
    shown, targets = [], []
    for batch in validation:
        scored = with_scored_positions(batch, causal)
        shown.append(batch["input_ids"].reshape(-1)[scored["scored_index"]].numpy())
        targets.append(scored["scored_targets"].numpy())
    return np.concatenate(shown).astype(np.int64), np.concatenate(targets).astype(np.int64)


def reference_losses(train_ids: np.ndarray, validation: list[dict[str, torch.Tensor]],
                     tokenizer: PreTrainedTokenizerFast, objective: str, vocab_size: int) -> dict[str, float | int]:
    """The reference lines (see the module's docstring) of an objective ("mlm" or "causal") on `validation`, from
    the training split's ids `train_ids`: unigram, and unigram_copy (MLM) or bigram (causal), and predictions."""
    if objective not in ("mlm", "causal"):
        raise ValueError(f"objective must be 'mlm' or 'causal', got {objective!r}")
    train_ids = np.asarray(train_ids, dtype=np.int64)
    support = _support(tokenizer, objective, vocab_size)
    unigram = _unigram(train_ids, support)
    shown, targets = _scored(validation, objective == "causal")
    lines: dict[str, float | int] = {"unigram": float(-np.log(unigram[targets]).mean())}
    if objective == "mlm":
        copied = _copy_probability(unigram, shown, targets, int(support.sum()))
        lines["unigram_copy"] = float(-np.log(copied).mean())
    else:
        lines["bigram"] = float(-np.log(_bigram_probability(train_ids, unigram, shown, targets)).mean())
    lines["predictions"] = len(targets)
    return lines


def strongest_line(lines: dict) -> tuple[str, float] | None:
    """(name, value) of the context-free line τ must beat: unigram_copy (MLM) or bigram (causal); None if absent."""
    for name in ("unigram_copy", "bigram"):
        if isinstance(lines.get(name), int | float):
            return name, float(lines[name])
    return None


def reference_warning(target: float, lines: dict | None) -> str | None:
    """The warning when the target τ is not below the strongest context-free line, naming both and the gap; None
    when it is below, or when τ or the lines are missing (a run directory made before they were recorded)."""
    line = strongest_line(lines or {})
    if line is None or not math.isfinite(target) or not math.isfinite(line[1]) or target < line[1]:
        return None
    name, value = line
    return (f"warning: the target τ = {target:.4f} is not below the context-free {name} line {value:.4f} "
            f"(τ is {target - value:.4f} nats above it): the comparison mostly measures how fast the models learn "
            "token frequencies; a larger budget (--budget-steps) lowers τ")
