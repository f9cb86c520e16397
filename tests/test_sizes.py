import pytest
import torch

from bench.errors import BenchError
from bench.sizes import SIZES, get_size, parse_pair


def test_paper_sizes_have_the_papers_shapes():
    assert get_size("bert-small").dims == (6, 512, 8, 2048)
    assert get_size("bert-base").dims == (12, 768, 12, 3072)
    assert get_size("bert-large").dims == (24, 1024, 16, 4096)
    assert get_size("gpt2-base").dims == (12, 768, 12, 3072)
    assert get_size("gpt2-medium").dims == (24, 1024, 16, 4096)
    assert get_size("roberta-small").dims == (6, 512, 8, 2048)


@pytest.mark.parametrize("name", ["bert-nano", "roberta-nano", "gpt2-nano"])
def test_sizes_build_real_transformers_models_of_their_shape(name):
    size = get_size(name)
    model = size.build(vocab_size=300, seq_len=16, seed=0, pad_token_id=1)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == size.dims[:3]
    logits = model(input_ids=torch.randint(3, 300, (2, 16))).logits
    assert logits.shape == (2, 16, 300)


def test_same_seed_same_init():
    size = get_size("bert-nano")
    a, b = (size.build(100, 16, seed=3).state_dict() for _ in range(2))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_every_family_has_the_cpu_sizes():
    for family in ("bert", "roberta", "gpt2"):
        for shape in ("nano", "micro", "tiny", "mini", "small", "base"):
            assert f"{family}-{shape}" in SIZES


def test_valid_pair():
    pair = parse_pair("bert-small:bert-base")
    assert (pair.small.name, pair.large.name) == ("bert-small", "bert-base")
    assert pair.defaults.batch_size == 256 and pair.defaults.seq_len == 128
    assert parse_pair("gpt2-nano:gpt2-micro").family.objective == "causal"


@pytest.mark.parametrize("text, message", [
    ("bert-base:bert-small", "shrinks"),
    ("bert-tiny:bert-nano", "shrinks"),  # fewer hidden units, same layers
    ("bert-nano:gpt2-micro", "mixes families"),
    ("bert-nano:bert-gigantic", "unknown size"),
    ("bert-nano", "SMALL:LARGE"),
    ("bert-mini:bert-mini", "does not grow"),
])
def test_invalid_pairs_are_clear_errors(text, message):
    with pytest.raises(BenchError, match=message):
        parse_pair(text)
