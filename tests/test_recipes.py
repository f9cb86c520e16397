"""Each pair class trains with its recipe: the LiGO paper's for its pairs, growbench's measured one at CPU scale;
`bench list` shows it, `loop_config` builds the loop's optimizer from it, the manifest names it."""

import json

import pytest

from bench import runner
from bench.cli import main
from bench.runner.prepare import loop_config
from bench.sizes import CPU_DEFAULTS, PAPER_DEFAULTS, Pair, parse_pair
from bench.train import OptimConfig

# LiGO's BERT recipe (spec methods-reference.md §0.2; VITA-Group/LiGO configs/bert_wiki.txt): 10K warmup of 400K.
LIGO_BERT = OptimConfig(lr=2e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1, warmup_fraction=0.025,
                        grad_clip=1.0)


def _listing_block(out: str, recipe_name: str) -> list[str]:
    """The three lines `bench list` gives a pair class: its defaults, its recipe, the start of its source."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"    recipe {recipe_name}:"))
    return lines[at - 1:at + 2]


def test_list_shows_ligo_bert_recipe_for_bert_small_to_base(capsys):
    assert main(["list"]) == 0
    defaults, recipe, source = _listing_block(capsys.readouterr().out, "ligo-bert")
    assert "bert paper scale" in defaults and "bert-base" in defaults and "budget 400000 steps" in defaults
    assert "batch 256 x 128" in defaults and "parent 220000 steps" in defaults
    for words in ("AdamW lr 0.0002", "betas (0.9, 0.999)", "eps 1e-06", "weight decay 0.1",
                  "warmup 10000 of 400000 steps", "grad clip 1"):
        assert words in recipe, (words, recipe)
    assert source.startswith("    source: LiGO paper: 400K steps")


def test_list_shows_every_pair_class_recipe_with_its_source(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for defaults in (CPU_DEFAULTS, *PAPER_DEFAULTS.values()):
        _, recipe, source = _listing_block(out, defaults.recipe.name)
        assert f"lr {defaults.recipe.lr:g}" in recipe
        assert source.startswith(f"    source: {defaults.recipe.source[:40]}")
    cpu_source = _listing_block(out, CPU_DEFAULTS.recipe.name)[2]
    assert cpu_source == "    source: growbench's CPU recipe, measured (README, Default budgets)"
    assert "no grad clip" in _listing_block(out, "ligo-gpt2")[1]  # staged training's recipe does not clip


def test_loop_config_takes_the_pairs_recipe():
    assert loop_config(parse_pair("bert-small:bert-base"), device="cpu", progress_bar=False).optim == LIGO_BERT
    cpu = loop_config(parse_pair("bert-nano:bert-micro"), device="cpu", progress_bar=False).optim
    assert cpu == OptimConfig(**CPU_DEFAULTS.recipe.optim_settings()) and cpu != LIGO_BERT
    assert CPU_DEFAULTS.recipe.source == "growbench's CPU recipe, measured (README, Default budgets)"
    # a pretrain / grow of one size (runner.prepare.standalone) takes that size's class recipe too
    base = parse_pair("bert-small:bert-base").large
    assert loop_config(Pair(base, base), device="cpu", progress_bar=False).optim == LIGO_BERT


@pytest.mark.parametrize("pair", ["bert-small:bert-base", "bert-nano:bert-micro"])
def test_lr_overrides_only_the_recipes_peak_learning_rate(pair):
    recipe = parse_pair(pair).defaults.recipe
    optim = loop_config(parse_pair(pair), device="cpu", lr=5e-5, progress_bar=False).optim
    assert optim == OptimConfig(**{**recipe.optim_settings(), "lr": 5e-5})


def test_manifest_names_the_recipe_and_records_the_overridden_lr(corpus, tmp_path):
    defaults = parse_pair("bert-nano:bert-micro").defaults
    data = runner.DataConfig([str(corpus)], None, defaults.seq_len, defaults.batch_size, defaults.vocab_size)
    out = tmp_path / "run"
    runner.compare(runner.CompareConfig(budget_steps=4, data=data, out=out, device="cpu", lr=3e-4, eval_points=2,
                                        progress_bar=False, prepare_only=True), echo=lambda _: None)
    train = json.loads((out / "manifest.json").read_text())["train"]
    assert train["recipe"] == {"name": "growbench-cpu", "source": defaults.recipe.source}
    assert train["optim"] == {**defaults.recipe.optim_settings(), "betas": list(defaults.recipe.betas), "lr": 3e-4}
