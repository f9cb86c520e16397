"""Named model shapes, the three families they build, and `SMALL:LARGE` pairs with their defaults.

Every model is a real `transformers` model built from a local config; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
)

from bench.errors import BenchError


@dataclass(frozen=True)
class Family:
    name: str
    objective: str  # "mlm" (masked LM) or "causal"
    tokenizer_kind: str  # "wordpiece" or "bpe"
    model_class: type[PreTrainedModel]
    config_class: type[PretrainedConfig]


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", "mlm", "wordpiece", BertForMaskedLM, BertConfig),
    "roberta": Family("roberta", "mlm", "bpe", RobertaForMaskedLM, RobertaConfig),
    "gpt2": Family("gpt2", "causal", "bpe", GPT2LMHeadModel, GPT2Config),
}


class Dims(NamedTuple):
    """The shape of a transformer, the part growth changes."""

    layers: int
    hidden: int
    heads: int
    ffn: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def of(cls, config: PretrainedConfig) -> Dims:
        """The dims of a BERT / RoBERTa / GPT-2 config (GPT-2's n_inner None means 4 x hidden)."""
        ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
        return cls(config.num_hidden_layers, config.hidden_size, config.num_attention_heads, ffn)


@dataclass(frozen=True)
class Size:
    name: str
    family: str
    layers: int
    hidden: int
    heads: int
    ffn: int

    @property
    def dims(self) -> Dims:
        return Dims(self.layers, self.hidden, self.heads, self.ffn)

    def config(self, vocab_size: int, seq_len: int, pad_token_id: int = 0,
               base: PretrainedConfig | None = None) -> PretrainedConfig:
        """A transformers config for this shape. Dropout is 0: runs here are short, single-epoch
        pretraining, where dropout only slows learning, and 0 keeps CPU runs bit-reproducible.

        With `base` (a parent checkpoint's config) everything but the shape and the dropout is the base's:
        vocabulary, position table, type vocabulary, special token ids, activation, LayerNorm epsilon, tying;
        `vocab_size`, `seq_len` and `pad_token_id` are then not used."""
        if base is not None:
            return self._config_from(base)
        if self.family == "gpt2":
            return GPT2Config(
                vocab_size=vocab_size, n_positions=seq_len, n_embd=self.hidden,
                n_layer=self.layers, n_head=self.heads, n_inner=self.ffn,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                bos_token_id=pad_token_id, eos_token_id=pad_token_id, pad_token_id=pad_token_id,
            )
        config_class = FAMILIES[self.family].config_class
        # RoBERTa numbers positions from pad_token_id + 1, so it needs two extra slots.
        extra_positions = pad_token_id + 1 if self.family == "roberta" else 0
        return config_class(
            vocab_size=vocab_size, hidden_size=self.hidden, num_hidden_layers=self.layers,
            num_attention_heads=self.heads, intermediate_size=self.ffn,
            max_position_embeddings=seq_len + extra_positions, pad_token_id=pad_token_id,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            type_vocab_size=2 if self.family == "bert" else 1,
        )

    def _config_from(self, base: PretrainedConfig) -> PretrainedConfig:
        if base.model_type != self.family:
            raise BenchError(f"cannot build {self.name} ({self.family}) from a {base.model_type} config")
        if self.family == "gpt2":
            shape = {"n_layer": self.layers, "n_embd": self.hidden, "n_head": self.heads, "n_inner": self.ffn,
                     "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        else:
            shape = {"num_hidden_layers": self.layers, "hidden_size": self.hidden, "num_attention_heads": self.heads,
                     "intermediate_size": self.ffn, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        kept = {key: value for key, value in base.to_dict().items()
                if key not in _NOT_INHERITED and key not in shape}
        return FAMILIES[self.family].config_class.from_dict({**kept, **shape})

    def build(self, vocab_size: int, seq_len: int, seed: int, pad_token_id: int = 0,
              base: PretrainedConfig | None = None) -> PreTrainedModel:
        """LARGE (or SMALL) with transformers' default random init, seeded (see `config` for `base`)."""
        torch.manual_seed(seed)
        return FAMILIES[self.family].model_class(self.config(vocab_size, seq_len, pad_token_id, base))


# What a config built from a parent's does not take from it: where the parent came from and how it was stored.
_NOT_INHERITED = {"architectures", "_name_or_path", "transformers_version", "dtype", "torch_dtype",
                  "_attn_implementation", "_attn_implementation_internal", "model_type"}


def positions_of(config: PretrainedConfig) -> int:
    """How many tokens one sequence of a model of `config` may hold: its position table, less RoBERTa's offset
    (RoBERTa numbers positions from pad_token_id + 1)."""
    if config.model_type == "gpt2":
        return config.n_positions
    offset = (config.pad_token_id or 0) + 1 if config.model_type == "roberta" else 0
    return config.max_position_embeddings - offset


def size_of(config: PretrainedConfig, name: str) -> Size:
    """The size of a checkpoint's config (a parent's), named `name`."""
    return Size(name, config.model_type, *Dims.of(config))


def parent_size_name(source: str) -> str:
    """The name of the SMALL a checkpoint is: `parent(<its folder's or hub id's last part>)`."""
    return f"parent({Path(source.rstrip('/')).name or source})"


# (layers, hidden, heads, ffn). nano..mini are CPU scale; small/base/large are the LiGO paper's.
_SHAPES = {
    "nano": (2, 64, 2, 256),
    "micro": (4, 128, 4, 512),
    "tiny": (2, 128, 2, 512),
    "mini": (4, 256, 4, 1024),
    "small": (6, 512, 8, 2048),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}
_GPT2_NAMES = {"large": "medium"}  # GPT-2's 24L/1024H model is called "medium"


def _all_sizes() -> dict[str, Size]:
    sizes = {}
    for family in FAMILIES:
        for shape, dims in _SHAPES.items():
            shape_name = _GPT2_NAMES.get(shape, shape) if family == "gpt2" else shape
            size = Size(f"{family}-{shape_name}", family, *dims)
            sizes[size.name] = size
    return sizes


SIZES: dict[str, Size] = _all_sizes()


def get_size(name: str) -> Size:
    try:
        return SIZES[name]
    except KeyError:
        raise BenchError(f"unknown size {name!r}; known sizes: {', '.join(SIZES)}") from None


@dataclass(frozen=True)
class Recipe:
    """How a pair class trains: AdamW's settings and the learning-rate schedule (the names are those of
    bench.train.OptimConfig's fields, which `optim_settings` fills), and `source`, where each number of the pair
    class's defaults (these and its PairDefaults' steps, batch, sequence length, vocabulary) comes from."""

    optimizer: ClassVar[str] = "AdamW"  # the loop's one optimizer (bench/step.py)

    name: str
    lr: float  # peak learning rate
    betas: tuple[float, float]
    eps: float
    weight_decay: float  # on matrices; biases and LayerNorm weights get none
    warmup_fraction: float  # of the budget: linear warmup, then linear decay to 0 at the budget
    grad_clip: float  # largest gradient norm; 0: no clipping
    source: str

    def optim_settings(self) -> dict:
        """The keyword arguments of bench.train.OptimConfig for this recipe."""
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                "warmup_fraction": self.warmup_fraction, "grad_clip": self.grad_clip}


@dataclass(frozen=True)
class PairDefaults:
    """What `bench compare` uses for a pair unless told otherwise: the pair class's recipe.

    `budget_steps` is in steps of LARGE trained from scratch (the budget itself is the FLOPs of
    those steps); `parent_steps` is how long SMALL is pretrained. `micro_batch` splits a batch
    into gradient-accumulation chunks so that paper-scale pairs fit in CPU memory.
    """

    budget_steps: int
    parent_steps: int
    quick_budget_steps: int
    quick_parent_steps: int
    seq_len: int
    batch_size: int
    vocab_size: int
    recipe: Recipe
    micro_batch: int | None = None


# CPU scale, chosen by measurement (docs/defaults.md): at a 9000-step budget bert-micro from scratch ends at 5.094,
# 0.68 nats below the unigram + copy line (5.769 on the built-in corpus's 10,080 validation predictions), so tau
# measures what a model learns from context, not token frequencies (6000 steps end 0.24 below it, 2000 above); the
# 6000-step bert-nano parent ends at 5.708, below the line too and 0.6 above scratch's tau, so growth has something to
# win. lr 2e-3 helped the parent but not scratch. Six methods x three seeds: about 3 hours on a quiet 2-core CPU.
# --quick (300 / 300) ends above the line and says so.
CPU_DEFAULTS = PairDefaults(
    budget_steps=9000, parent_steps=6000, quick_budget_steps=300, quick_parent_steps=300,
    seq_len=64, batch_size=16, vocab_size=8192,
    recipe=Recipe("growbench-cpu", lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, warmup_fraction=0.06,
                  grad_clip=1.0, source="growbench's CPU recipe, measured (README, Default budgets)"),
)

# The LiGO paper's pairs (Wang et al., ICLR 2023) as /work/shared/spec/methods-reference.md §0.2 reads the paper and
# the official code; "LiGO code" is VITA-Group/LiGO at 68e657d.
_LIGO_CODE_OPTIMIZER = ("transformers AdamW with its default betas (0.9, 0.999) (run_lm_distributed.py l.238-241), "
                        "eps 1e-6 and grad clip 1.0 (param.py l.135-136), linear warmup then linear decay "
                        "(run_lm_distributed.py l.250)")
_PAPER_PARENT = "parent 220K steps: the paper's BERT-Small (App. C.1)"
PAPER_DEFAULTS: dict[str, PairDefaults] = {
    "bert": PairDefaults(
        budget_steps=400_000, parent_steps=220_000, quick_budget_steps=1000, quick_parent_steps=1000,
        seq_len=128, batch_size=256, vocab_size=30522, micro_batch=32,
        recipe=Recipe(
            "ligo-bert", lr=2e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1,
            warmup_fraction=10_000 / 400_000, grad_clip=1.0,
            source="LiGO paper: 400K steps, batch 256 x 128, lr 2e-4, 10K warmup steps (0.025 of the budget), "
                   f"linear decay, MLM; {_PAPER_PARENT}. LiGO code: configs/bert_wiki.txt l.14-20 (64 per GPU x 4 "
                   f"GPUs, max_steps 400000, learning_rate 2e-4, weight_decay 0.1, warmup_steps 10000); "
                   f"{_LIGO_CODE_OPTIMIZER}; vocab 30522 (bert-base-uncased). the code's "
                   "grown BERT restarts with warmup 0 (README l.109): each growth method's own schedule, docs/methods.md"),
    ),
    "roberta": PairDefaults(
        budget_steps=400_000, parent_steps=220_000, quick_budget_steps=1000, quick_parent_steps=1000,
        seq_len=128, batch_size=1024, vocab_size=50265, micro_batch=32,
        recipe=Recipe(
            "ligo-roberta", lr=8e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1,
            warmup_fraction=10_000 / 400_000, grad_clip=1.0,
            source="LiGO paper: 400K steps, batch 1024, lr 8e-4 (chosen: the code's README l.117-135 uses lr 2e-4 "
                   "at the same batch, 64 x 4 GPUs x 4 accumulation, a paper/code discrepancy). LiGO code: "
                   "configs/roberta_wiki.txt l.3 (block_size 126: 128 tokens), l.19-20 (weight_decay 0.1, "
                   "warmup_steps 10000: 0.025 of the budget); "
                   f"{_LIGO_CODE_OPTIMIZER}; vocab 50265 (roberta-base); "
                   f"{_PAPER_PARENT} (the paper gives none for RoBERTa-Small)"),
    ),
    "gpt2": PairDefaults(
        budget_steps=400_000, parent_steps=220_000, quick_budget_steps=1000, quick_parent_steps=1000,
        seq_len=1024, batch_size=384, vocab_size=50257, micro_batch=8,
        recipe=Recipe(
            "ligo-gpt2", lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01,
            warmup_fraction=3_000 / 400_000, grad_clip=0.0,
            source="LiGO paper: batch 384 x 1024, C4, staged training's recipe (Shen et al. 2022), which "
                   "allenai/staged-training gives: lr 2e-3 and 3K warmup steps (0.0075 of the budget) from its "
                   "README's GPT-2 commands (--lr 0.002006911598778545 --warmup_steps 3000, run at batch 512), "
                   "betas (0.9, 0.98), eps 1e-6, weight decay 0.01 and no clipping (grad_clip 0) from "
                   "scripts/gpt_pretrain.py's defaults, linear warmup and decay; vocab 50257 (GPT-2's). Unverified, "
                   "growbench's choice: the 400K-step budget (BERT's; the spec gives no GPT-2 step count, staged "
                   f"training's runs are 250K) and the {_PAPER_PARENT}"),
    ),
}


@dataclass(frozen=True)
class Pair:
    small: Size
    large: Size

    @property
    def name(self) -> str:
        return f"{self.small.name}:{self.large.name}"

    @property
    def family(self) -> Family:
        return FAMILIES[self.large.family]

    @property
    def defaults(self) -> PairDefaults:
        return defaults_for(self.large)


def defaults_for(size: Size) -> PairDefaults:
    """CPU-scale defaults for the laptop sizes, the paper's settings and recipe for small / base / large."""
    return CPU_DEFAULTS if size.hidden <= 256 else PAPER_DEFAULTS[size.family]


def split_pair(text: str) -> tuple[str | None, str]:
    """`SMALL:LARGE` -> (SMALL's name, LARGE's name); `:LARGE` -> (None, LARGE's name): SMALL is a checkpoint's."""
    small_name, sep, large_name = text.partition(":")
    if not sep or not large_name.strip():
        raise BenchError(f"a pair is SMALL:LARGE (e.g. bert-nano:bert-micro, or :bert-mini with --small-from), "
                         f"got {text!r}")
    return small_name.strip() or None, large_name.strip()


def parse_pair(text: str | Pair) -> Pair:
    """`SMALL:LARGE` -> Pair, or BenchError when the pair is unknown, mixes families, or shrinks. A Pair (e.g. one
    whose SMALL was read from a checkpoint, see `parent_pair`) is returned as it is."""
    if isinstance(text, Pair):
        return text
    small_name, large_name = split_pair(text)
    if small_name is None:
        raise BenchError(f"the pair {text} names no SMALL: name it, or give the checkpoint to read it from "
                         "(--small-from)")
    return make_pair(get_size(small_name), get_size(large_name))


def parent_pair(text: str | Pair, config: PretrainedConfig, source: str) -> Pair:
    """The pair of a comparison that grows the checkpoint `source` (whose config is `config`): `SMALL:LARGE`, or
    `:LARGE` with SMALL the checkpoint's own shape (`parent(<name>)`). BenchError when the checkpoint cannot be the
    pair's SMALL: another family, a named SMALL of another shape, larger than LARGE in any dimension, or the same
    shape as LARGE."""
    if isinstance(text, Pair):
        small_name, large = text.small.name, text.large
    else:
        small_name, large_name = split_pair(text)
        large = get_size(large_name)
    family = config.model_type
    if family not in FAMILIES:
        raise BenchError(f"the parent at {source} is a {family} model; growbench grows {', '.join(FAMILIES)} "
                         "checkpoints")
    if family != large.family:
        raise BenchError(f"the parent at {source} is a {family} model, but {large.name} is {large.family}")
    shape = Dims.of(config)
    if small_name is not None:
        small = text.small if isinstance(text, Pair) else get_size(small_name)
        if small.dims != shape:
            raise BenchError(f"the parent at {source} is {tuple(shape)} (layers, hidden, heads, ffn), not {small.name} "
                             f"{tuple(small.dims)}; --pair :{large.name} reads SMALL from the checkpoint")
    else:
        small = size_of(config, parent_size_name(source))
    larger = [f"{dim} {s} > {l}" for dim, s, l in zip(Dims._fields, shape, large.dims) if s > l]
    if larger:
        raise BenchError(f"the parent at {source} is larger than {large.name} ({', '.join(larger)}): growth cannot "
                         "shrink it; choose a larger LARGE")
    return make_pair(small, large)


def make_pair(small: Size, large: Size) -> Pair:
    text = f"{small.name}:{large.name}"
    if small.family != large.family:
        raise BenchError(f"pair {text} mixes families ({small.family} and {large.family})")
    shrinks = [
        dim for dim, s, l in zip(("layers", "hidden", "heads", "ffn"), small.dims, large.dims) if l < s
    ]
    if shrinks:
        raise BenchError(f"pair {text} shrinks ({', '.join(shrinks)}); LARGE must not be smaller than SMALL")
    if small.dims == large.dims:
        raise BenchError(f"pair {text} does not grow: both sizes have the same shape")
    return Pair(small, large)
