"""The language-modelling loss every phase trains on, computed where it is scored.

The MLM head (a vocab-sized projection) is most of a small model's FLOPs, so it runs only on the
masked positions; for causal LM every position but the last is scored anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of a position the loss does not score
_HEAD = {"bert": "cls", "roberta": "lm_head", "gpt2": "lm_head"}


def is_causal(model: nn.Module) -> bool:
    return model.config.model_type == "gpt2"


def scored_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) at the positions the LM loss scores: masked ones (MLM) or next tokens (causal)."""
    hidden = model.base_model(input_ids=batch["input_ids"]).last_hidden_state
    labels = batch["labels"]
    if is_causal(model):
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    scored = labels != IGNORE
    head = getattr(model, _HEAD[model.config.model_type])
    return head(hidden[scored]), labels[scored]


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits, targets = scored_logits(model, batch)
    return F.cross_entropy(logits.float(), targets)
