"""Growing published Hugging Face checkpoints (issue 12): a parent with its own vocabulary, tokenizer, positions and
special ids, saved locally with `save_pretrained` in the shape of the published BERT-Tiny (30522-token WordPiece,
512 positions) and of a small GPT-2 with its byte-level BPE. Nothing is downloaded."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, write_corpus
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaTokenizerFast,
)

from bench.cli import main
from bench.sizes import Dims, Size, get_size

BERT_VOCAB, BERT_POSITIONS = 30522, 512
FAST = ["--budget-steps", "20", "--seeds", "1", "--eval-points", "1", "--no-progress"]


def bert_vocab() -> list[str]:
    """30522 WordPiece entries laid out as BERT's: [PAD] 0, [unused0..98], [UNK] 100, [CLS] 101, [SEP] 102,
    [MASK] 103, then characters, "##" continuations and the corpus's words; [unusedN] fill the rest."""
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = sorted({word.strip(".,").lower() for sentence in SENTENCES for word in sentence.split()})
    for token in [*characters, *(f"##{c}" for c in characters), *words]:
        if token not in vocab:
            vocab.append(token)
    vocab += [f"[unused{i}]" for i in range(99, 99 + BERT_VOCAB - len(vocab))]
    assert len(vocab) == len(set(vocab)) == BERT_VOCAB
    return vocab


def save_bert_tiny(folder: Path, positions: int = BERT_POSITIONS, head: bool = True) -> Path:
    """A checkpoint in the shape of the published BERT-Tiny (2 layers, 128 wide, 2 heads, FFN 512), with a
    30522-token WordPiece tokenizer at BERT's special ids. Its weights are drawn at 5x BERT's init scale, so that its
    logits are far from uniform and a growth that does not preserve them shows."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n")
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"))
    config = BertConfig(vocab_size=BERT_VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=positions, initializer_range=0.1)
    torch.manual_seed(3)
    (BertForMaskedLM if head else BertModel)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def byte_level_bpe(corpus: Path, special: list[str], vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE as GPT-2's and RoBERTa's, trained here on the corpus."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train([str(path) for path in sorted(corpus.glob("*.txt"))], trainer=trainer)
    return bpe


def save_gpt2_nano(folder: Path, corpus: Path, positions: int = 128) -> Path:
    """A GPT-2 of gpt2-nano's shape with its own byte-level BPE (<|endoftext|> its only special token, as in
    GPT-2: no pad token)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = GPT2TokenizerFast(tokenizer_object=byte_level_bpe(corpus, ["<|endoftext|>"]),
                                  bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    end = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=positions, n_embd=64, n_layer=2, n_head=2, n_inner=256,
                        bos_token_id=end, eos_token_id=end, initializer_range=0.1)
    torch.manual_seed(4)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_roberta_nano(folder: Path, corpus: Path) -> Path:
    """A RoBERTa of roberta-nano's shape with RoBERTa's specials (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4) and
    RoBERTa's position table: 64 usable positions after the offset of pad_token_id + 1."""
    folder.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = RobertaTokenizerFast(tokenizer_object=byte_level_bpe(corpus, special), bos_token="<s>",
                                     pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>",
                                     cls_token="<s>", sep_token="</s>")
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=256, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    torch.manual_seed(5)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-parents")
    corpus = write_corpus(root / "corpus")
    return {"root": root, "corpus": corpus, "bert": save_bert_tiny(root / "bert-tiny"),
            "gpt2": save_gpt2_nano(root / "gpt2-parent", corpus)}


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """One growbench cache for the module's runs (the corpus and its token ids are made once)."""
    folder = tmp_path_factory.getbasetemp() / "hf-parent-cache"
    monkeypatch.setenv("GROWBENCH_CACHE", str(folder))
    return folder


@pytest.fixture
def quick_calibration(monkeypatch):
    """One round of one timed step per phase signature: calibration's own accuracy is tested elsewhere."""
    from bench import calibration

    monkeypatch.setattr(calibration, "ROUNDS", 1)
    monkeypatch.setattr(calibration, "REPEATS", 1)


def compare(parent: Path, pair: str, methods: str, out: Path, corpus: Path, *extra: str) -> int:
    return main(["compare", "--small-from", str(parent), "--pair", pair, "--methods", methods, "--corpus", str(corpus),
                 "--out", str(out), *FAST, *extra])


def states(out: Path) -> dict[str, str]:
    return {path.parent.name: json.loads(path.read_text())["state"] for path in out.glob("runs/*/status.json")}


# ------------------------------------------------------------------------------------------------------ BERT


def test_compare_grows_a_bert_tiny_shaped_checkpoint_with_its_own_tokenizer(assets, cache, quick_calibration,
                                                                            tmp_path):
    out = tmp_path / "run"
    assert compare(assets["bert"], "bert-tiny:bert-mini", "scratch,stackbert,bert2bert:fpi,ligo", out,
                   assets["corpus"]) == 0
    assert states(out) == dict.fromkeys(["scratch-s0", "stackbert-s0", "bert2bert_fpi-s0", "ligo-s0"], "done")
    manifest = json.loads((out / "manifest.json").read_text())
    checkpoint = manifest["parent"]["checkpoint"]
    assert manifest["parent"]["from"] == str(assets["bert"]) and checkpoint["source"] == str(assets["bert"])
    assert (checkpoint["vocab_size"], checkpoint["positions"], checkpoint["type_vocab_size"]) == (30522, 512, 2)
    assert checkpoint["tokenizer"]["special_ids"] == {"pad": 0, "bos": None, "eos": None, "cls": 101, "sep": 102,
                                                      "mask": 103, "unk": 100}
    parent_tokenizer = AutoTokenizer.from_pretrained(assets["bert"])
    from bench.data import tokenizer_fingerprint

    assert manifest["data"]["tokenizer"]["fingerprint"] == checkpoint["tokenizer"]["fingerprint"] \
        == tokenizer_fingerprint(parent_tokenizer)
    assert manifest["data"]["vocab_size"] == 30522
    for run in ("scratch-s0", "ligo-s0"):  # every LARGE has the parent's vocabulary, positions and tokenizer
        model = AutoModelForMaskedLM.from_pretrained(out / "runs" / run / "model")
        assert (model.config.vocab_size, model.config.max_position_embeddings) == (30522, 512)
        assert Dims.of(model.config) == get_size("bert-mini").dims
        assert AutoTokenizer.from_pretrained(out / "runs" / run / "model")("reads a file")["input_ids"] \
            == parent_tokenizer("reads a file")["input_ids"]


def _width_only_context(parent_dir: Path, method_seed: int = 0):
    """A GrowthContext growing the checkpoint in width only (2 x 128 -> 2 x 256): doubling every space duplicates
    every unit once, so LayerNorm statistics stay exact and FPI growth preserves the function."""
    from bench.methods import GrowthContext
    from bench.runner.parent import load_parent, open_parent
    from bench.sizes import make_pair, parent_size_name, size_of

    checkpoint = open_parent(str(parent_dir))
    small = size_of(checkpoint.config, parent_size_name(str(parent_dir)))
    wide = Size("bert-tiny-wide", "bert", 2, 256, 4, 1024)
    parent = load_parent(str(parent_dir), small, checkpoint=checkpoint)
    return GrowthContext(make_pair(small, wide), parent, checkpoint.config.vocab_size, 64, 0, method_seed,
                         checkpoint.config)


def fpi_logit_difference(parent_dir: Path) -> tuple[float, float]:
    """(max |parent - grown| of bert2bert:fpi's grown model's logits, max |parent logit|) on one masked batch of the
    parent's own tokenizer (token type ids 0 and 1 both used)."""
    from bench.methods import make_method

    ctx = _width_only_context(parent_dir)
    parent = ctx.parent.eval()
    grown = next(make_method("bert2bert:fpi", {"stage1_share": "0"}).phases(ctx)).model.eval()
    assert (grown.config.vocab_size, grown.config.max_position_embeddings, grown.config.type_vocab_size) \
        == (30522, 512, 2)
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    batch = tokenizer(SENTENCES[:4], SENTENCES[2:], padding=True, return_tensors="pt")
    with torch.no_grad():
        parent_logits = parent(**batch).logits
        difference = (grown(**batch).logits - parent_logits).abs().max().item()
    return difference, parent_logits.abs().max().item()


def test_fpi_growth_of_the_bert_tiny_shaped_checkpoint_preserves_its_logits(assets):
    difference, scale = fpi_logit_difference(assets["bert"])
    print(f"FPI growth 2x128 -> 2x256 of the BERT-Tiny-shaped parent: max |logit difference| {difference:.3g} "
          f"(logits up to {scale:.3g})")
    assert scale > 1 and difference < 1e-5


def test_bench_grow_writes_a_checkpoint_with_the_parents_tokenizer(assets, cache, tmp_path):
    out = tmp_path / "grown"
    assert main(["grow", "--method", "bert2bert:fpi", "--from", str(assets["bert"]), "--to", "bert-mini", "--out",
                 str(out), "--corpus", str(assets["corpus"]), "--no-progress"]) == 0
    model = AutoModelForMaskedLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert (model.config.vocab_size, model.config.max_position_embeddings) == (BERT_VOCAB, BERT_POSITIONS)
    assert Dims.of(model.config) == get_size("bert-mini").dims and len(tokenizer) == BERT_VOCAB
    parent_tokenizer = AutoTokenizer.from_pretrained(assets["bert"])
    assert tokenizer("The parser reads 12 files.")["input_ids"] == parent_tokenizer("The parser reads 12 files.")[
        "input_ids"]
    assert (tokenizer.mask_token_id, tokenizer.cls_token_id, tokenizer.pad_token_id) == (103, 101, 0)
    growth = json.loads((out / "growth.json").read_text())
    assert growth["parent_checkpoint"]["vocab_size"] == BERT_VOCAB
    with torch.no_grad():  # the saved model runs on the parent's tokenizer's ids
        logits = model(**tokenizer(SENTENCES[0], return_tensors="pt")).logits
    assert logits.shape[-1] == BERT_VOCAB and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------------------------------- GPT-2


def test_compare_grows_a_gpt2_checkpoint_with_its_byte_level_bpe(assets, cache, quick_calibration, tmp_path):
    """`--pair :gpt2-micro`: SMALL is read from the checkpoint."""
    out = tmp_path / "run"
    assert compare(assets["gpt2"], ":gpt2-micro", "scratch,stackbert,bert2bert:fpi,ligo", out, assets["corpus"],
                   "--method-arg", "ligo.operator_steps=2") == 0
    assert set(states(out).values()) == {"done"} and len(states(out)) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pair"] == "parent(gpt2-parent):gpt2-micro"
    assert tuple(manifest["small"][key] for key in ("family", "layers", "hidden", "heads", "ffn")) == \
        ("gpt2", *get_size("gpt2-nano").dims)
    checkpoint = manifest["parent"]["checkpoint"]
    tokenizer = AutoTokenizer.from_pretrained(assets["gpt2"])
    assert (checkpoint["vocab_size"], checkpoint["positions"]) == (len(tokenizer), 128)
    assert checkpoint["tokenizer"]["special_ids"]["eos"] == tokenizer.eos_token_id
    assert checkpoint["tokenizer"]["special_ids"]["pad"] is None  # GPT-2 has none; nothing is padded
    model = AutoModelForCausalLM.from_pretrained(out / "runs" / "stackbert-s0" / "model")
    assert (model.config.vocab_size, model.config.n_positions, model.config.eos_token_id) == \
        (len(tokenizer), 128, tokenizer.eos_token_id)


def test_bench_grow_of_the_gpt2_checkpoint_loads_with_auto_model_for_causal_lm(assets, cache, tmp_path):
    out = tmp_path / "grown"
    assert main(["grow", "--method", "ligo", "--method-arg", "ligo.operator_steps=2", "--from", str(assets["gpt2"]),
                 "--to", "gpt2-micro", "--out", str(out), "--corpus", str(assets["corpus"]), "--no-progress"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    parent_tokenizer = AutoTokenizer.from_pretrained(assets["gpt2"])
    assert Dims.of(model.config) == get_size("gpt2-micro").dims
    assert (model.config.vocab_size, model.config.n_positions, len(tokenizer)) == (len(parent_tokenizer), 128,
                                                                                   len(parent_tokenizer))
    assert tokenizer(SENTENCES[1])["input_ids"] == parent_tokenizer(SENTENCES[1])["input_ids"]
    with torch.no_grad():
        logits = model(**tokenizer(SENTENCES[1], return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_bench_grow_of_a_roberta_checkpoint_keeps_its_position_offset(assets, cache, tmp_path):
    parent = save_roberta_nano(tmp_path / "roberta-parent", assets["corpus"])
    out = tmp_path / "grown"
    assert main(["grow", "--method", "stackbert", "--from", str(parent), "--to", "roberta-micro", "--out", str(out),
                 "--corpus", str(assets["corpus"]), "--no-progress"]) == 0
    model = AutoModelForMaskedLM.from_pretrained(out / "model")
    assert (model.config.max_position_embeddings, model.config.pad_token_id, model.config.type_vocab_size) == (66, 1, 1)
    assert AutoTokenizer.from_pretrained(out / "model").mask_token_id == 4


# --------------------------------------------------------------------------------------------------- bad input


def _bert_parent(folder: Path, positions: int = 64, head: bool = True, tokenizer: bool = True) -> Path:
    """A small BERT checkpoint of bert-tiny's shape (vocab 300) for the cases that fail before training."""
    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=300, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=positions)
    (BertForMaskedLM if head else BertModel)(config).save_pretrained(folder)
    if tokenizer:
        (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
                                                     *(f"##{c}" for c in string.ascii_lowercase)]) + "\n")
        BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


BAD = {  # name: (argv with {bert} / {gpt2} / {parent}, a piece of the one line)
    "other-family": (["compare", "--small-from", "{bert}", "--pair", ":gpt2-micro"], "is a bert model, but gpt2-micro"),
    "other-family-named": (["compare", "--small-from", "{gpt2}", "--pair", "bert-nano:bert-micro"],
                           "is a gpt2 model, but bert-micro"),
    "larger-than-large": (["compare", "--small-from", "{bert}", "--pair", ":bert-nano"],
                          "larger than bert-nano (hidden 128 > 64, ffn 512 > 256)"),
    "named-small-disagrees": (["compare", "--small-from", "{bert}", "--pair", "bert-nano:bert-mini"],
                              "(2, 128, 2, 512) (layers, hidden, heads, ffn), not bert-nano"),
    "same-shape-as-large": (["compare", "--small-from", "{bert}", "--pair", ":bert-tiny"], "does not grow"),
    "positions-fewer-than-seq-len": (["compare", "--small-from", "{short}", "--pair", ":bert-mini"],
                                     "has 32 positions, fewer than the run's sequence length 64"),
    "no-small-without-small-from": (["compare", "--pair", ":bert-mini"], "names no SMALL"),
    "no-lm-head": (["compare", "--small-from", "{headless}", "--pair", ":bert-mini"],
                   "growth needs a checkpoint with its masked-LM head"),
    "no-tokenizer": (["compare", "--small-from", "{untokenized}", "--pair", ":bert-mini"], "holds no tokenizer"),
    "grow-other-family": (["grow", "--method", "stackbert", "--from", "{gpt2}", "--to", "bert-mini"],
                          "is a gpt2 model, but bert-mini"),
    "grow-larger-than-large": (["grow", "--method", "stackbert", "--from", "{bert}", "--to", "bert-nano"],
                               "larger than bert-nano"),
    "grow-positions": (["grow", "--method", "stackbert", "--from", "{short}", "--to", "bert-mini"],
                       "has 32 positions"),
}


@pytest.fixture(scope="module")
def bad_parents(assets):
    root = assets["root"]
    return {"bert": assets["bert"], "gpt2": assets["gpt2"], "short": _bert_parent(root / "short", positions=32),
            "headless": _bert_parent(root / "headless", head=False),
            "untokenized": _bert_parent(root / "untokenized", tokenizer=False)}


@pytest.mark.parametrize("name", list(BAD))
def test_a_parent_growth_cannot_bridge_is_one_line_and_exit_2_before_anything_trains(name, bad_parents, assets,
                                                                                     cache, tmp_path, capsys):
    argv, message = BAD[name]
    argv = [token.format(**{key: str(path) for key, path in bad_parents.items()}) for token in argv]
    out = tmp_path / "out"
    argv += ["--out", str(out), "--corpus", str(assets["corpus"]), "--no-progress"]
    if argv[0] == "compare":
        argv += ["--methods", "scratch,stackbert"]
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in captured.err, lines
    assert not (out / "runs").exists() and not (out / "manifest.json").exists() and not (out / "model").exists()
    assert not (cache / "parents").exists()


# ------------------------------------------------------------------------------------------ the default path


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_a_config_built_on_a_growbench_parents_config_is_growbench_own(family):
    """A parent pretrained by growbench, given with --small-from, builds the LARGE growbench builds: same config,
    same initial weights (so a run grows from it exactly as from the cached parent)."""
    pad = 1 if family == "roberta" else 0
    small, large = get_size(f"{family}-nano"), get_size(f"{family}-micro")
    base = small.build(500, 16, seed=0, pad_token_id=pad).config  # as saved with the parent, and read back
    noise = {"architectures", "_name_or_path", "transformers_version", "dtype"}
    own, built = large.config(500, 16, pad).to_dict(), large.config(0, 0, base=base).to_dict()
    assert {k: v for k, v in own.items() if k not in noise} == {k: v for k, v in built.items() if k not in noise}
    first, second = large.build(500, 16, 3, pad).state_dict(), large.build(0, 0, 3, base=base).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_token_ids_are_cached_under_the_tokenizers_fingerprint(assets, cache):
    from bench import data

    corpus = data.load_corpus([str(assets["corpus"])])
    own = data.tokenize_corpus(corpus, data.load_tokenizer(corpus, "wordpiece", 300))
    parents = data.tokenize_corpus(corpus, AutoTokenizer.from_pretrained(assets["bert"]))
    assert own.fingerprint != parents.fingerprint
    folders = {path.name for path in (cache / "tokens").iterdir()}
    assert {own.fingerprint[:16], parents.fingerprint[:16]} <= folders
    assert int(parents.train.max()) < BERT_VOCAB and 101 not in set(parents.train[:200].tolist())  # no [CLS] in text
    assert not np_equal(own.train, parents.train)


def np_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_pair_parsing_reads_small_from_the_checkpoint(assets):
    from bench.errors import BenchError
    from bench.runner.parent import open_parent
    from bench.sizes import parent_pair, parse_pair

    config = open_parent(str(assets["bert"])).config
    pair = parent_pair(":bert-mini", config, str(assets["bert"]))
    assert pair.name == "parent(bert-tiny):bert-mini" and pair.small.dims == get_size("bert-tiny").dims
    assert parent_pair("bert-tiny:bert-mini", config, "x").name == "bert-tiny:bert-mini"
    assert parse_pair(pair) is pair
    with pytest.raises(BenchError, match="names no SMALL"):
        parse_pair(":bert-mini")
