"""The language-modelling loss every phase trains on, computed where it is scored.

The MLM head (a vocab-sized projection) is most of a small model's FLOPs, so it runs only on the
masked positions; for causal LM every position but the last is scored anyway.

A batch the loop prepared carries `scored_index` (the flat positions of the hidden states the loss scores) and
`scored_targets`, computed on the CPU before the batch is copied: selecting them is then a gather, with no sync
and no data-dependent shape on the device. A batch without them (a user's, a traced one) is masked here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of a position the loss does not score
_HEAD = {"bert": "cls", "roberta": "lm_head", "gpt2": "lm_head"}


def is_causal(model: nn.Module) -> bool:
    return model.config.model_type == "gpt2"


def _scored_mask(labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Which hidden states' predictions the loss scores: the labelled positions (MLM), or every position whose next
    token is labelled (causal; the last position has none)."""
    return (labels[:, 1:] if causal else labels) != IGNORE


def scored_count(labels: torch.Tensor, causal: bool) -> int:
    """How many predictions of a batch the LM loss scores."""
    return int(_scored_mask(labels, causal).sum())


def with_scored_positions(batch: dict[str, torch.Tensor], causal: bool) -> dict[str, torch.Tensor]:
    """`batch` with `scored_index` and `scored_targets` (row-major order, as boolean masking gives them)."""
    labels = batch["labels"]
    rows, positions = _scored_mask(labels, causal).nonzero(as_tuple=True)
    targets = labels[rows, positions + 1] if causal else labels[rows, positions]
    return {**batch, "scored_index": rows * labels.shape[1] + positions, "scored_targets": targets}


def scored_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) at the positions the LM loss scores: masked ones (MLM) or next tokens (causal)."""
    hidden = model.base_model(input_ids=batch["input_ids"]).last_hidden_state
    head = getattr(model, _HEAD[model.config.model_type])
    if "scored_index" in batch:
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["scored_index"])
        return head(selected), batch["scored_targets"]
    labels = batch["labels"][:, 1:] if is_causal(model) else batch["labels"]
    if is_causal(model):
        hidden = hidden[:, :-1]
    scored = _scored_mask(batch["labels"], is_causal(model))
    return head(hidden[scored]), labels[scored]


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits, targets = scored_logits(model, batch)
    return F.cross_entropy(logits.float(), targets)
