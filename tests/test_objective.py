import pytest
import torch

from bench.objective import IGNORE, lm_loss
from bench.sizes import get_size


@pytest.mark.parametrize("name", ["bert-nano", "roberta-nano"])
def test_sparse_mlm_head_equals_the_dense_head(name):
    model = get_size(name).build(vocab_size=500, seq_len=32, seed=0, pad_token_id=1)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (4, 32), generator=generator)
    labels = torch.where(torch.rand(4, 32, generator=generator) < 0.15, ids, torch.full_like(ids, IGNORE))
    batch = {"input_ids": ids, "labels": labels}
    dense = model(input_ids=ids, labels=labels).loss
    assert abs(lm_loss(model, batch).item() - dense.item()) < 1e-5


def test_causal_loss_equals_transformers_shifted_loss():
    model = get_size("gpt2-nano").build(vocab_size=500, seq_len=32, seed=0)
    ids = torch.randint(0, 500, (4, 32), generator=torch.Generator().manual_seed(1))
    dense = model(input_ids=ids, labels=ids).loss
    assert abs(lm_loss(model, {"input_ids": ids, "labels": ids}).item() - dense.item()) < 1e-5
