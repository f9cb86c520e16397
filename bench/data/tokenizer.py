"""The tokenizer, trained on a corpus's training text (or loaded from a folder), and the token ids of both
splits, encoded once and cached."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from bench.data.corpus import CORPUS_FORMAT, Corpus, _paragraphs, _sha256, cache_root
from bench.errors import BenchError

log = logging.getLogger(__name__)

# Bump when tokenizer training changes, so that a cached tokenizer from the old code is not reused.
# 2: WordPiece's "##c" ids fixed (1 gave ids that changed from one process to the next).
TOKENIZER_FORMAT = 2


# ----------------------------------------------------------------------------------------------
# Tokenizer

# Special tokens in id order. RoBERTa's order puts <pad> at 1, which `Size.config` expects.
_SPECIAL_TOKENS = {
    "wordpiece": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    "bpe": ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
}
_SPECIAL_ROLES = {
    "wordpiece": {
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
    },
    "bpe": {
        "bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>",
        "cls_token": "<s>", "sep_token": "</s>",
    },
}


def _continuation_tokens(tokenizer: Tokenizer, train_path: Path) -> list[str]:
    """Every "##c" token WordPiece training will make from the text, in code point order.

    `tokenizers` (0.23, huggingface/tokenizers#1794) creates these while iterating a hash map of the
    words, so their ids, and through the ids the order of equally frequent merges, change from one
    process to the next. A pass with no merges (the same normalisation and pre-tokenisation) lists them."""
    probe = Tokenizer.from_str(tokenizer.to_str())
    trainer = trainers.WordPieceTrainer(vocab_size=0, show_progress=False)  # the alphabet and its "##c" only
    probe.train_from_iterator(_paragraphs(train_path), trainer=trainer)
    return sorted(token for token in probe.get_vocab() if token.startswith("##") and len(token) == 3)


def _train_tokenizer(train_path: Path, kind: str, vocab_size: int) -> Tokenizer:
    """WordPiece with BERT's normalisation (lower case), or byte-level BPE as in RoBERTa and GPT-2.

    The same text gives the same vocabulary and ids in every process: BPE's first tokens are its sorted
    byte alphabet, and WordPiece's "##c" tokens get fixed ids by entering training as special tokens
    (right after the real ones) that are not kept as special afterwards."""
    special = list(_SPECIAL_TOKENS[kind])
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=special + _continuation_tokens(tokenizer, train_path),
            show_progress=False,
        )
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tokenizer.train_from_iterator(_paragraphs(train_path), trainer=trainer)
    state = json.loads(tokenizer.to_str())
    state["added_tokens"] = [token for token in state["added_tokens"] if token["content"] in special]
    tokenizer = Tokenizer.from_str(json.dumps(state))
    start, end = (special[2], special[3]) if kind == "wordpiece" else (special[0], special[2])
    processor = processors.BertProcessing if kind == "wordpiece" else processors.RobertaProcessing
    tokenizer.post_processor = processor((end, tokenizer.token_to_id(end)), (start, tokenizer.token_to_id(start)))
    return tokenizer


def load_tokenizer(
    corpus: Corpus, kind: str, vocab_size: int, tokenizer_dir: str | None = None, cache_dir: Path | None = None
) -> PreTrainedTokenizerFast:
    """A saved Hugging Face tokenizer from `tokenizer_dir`, else one trained on the training split, cached
    by (corpus, kind, vocab_size). A small corpus can give fewer than `vocab_size` tokens: use len()."""
    if tokenizer_dir is not None:
        if not Path(tokenizer_dir).is_dir():
            raise BenchError(f"tokenizer folder {tokenizer_dir} does not exist")
        try:
            return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise BenchError(f"cannot load a tokenizer from {tokenizer_dir}: {str(error).splitlines()[0]}") from None
    if kind not in _SPECIAL_TOKENS:
        raise ValueError(f"tokenizer kind must be one of {list(_SPECIAL_TOKENS)}, got {kind!r}")
    cache_dir = cache_dir or cache_root()
    name = f"{kind}-{vocab_size}-{corpus.fingerprint['sha256'][:16]}-v{TOKENIZER_FORMAT}"
    directory = cache_dir / "tokenizers" / name
    if not (directory / "tokenizer.json").exists():
        log.info("training a %s tokenizer of %d tokens on %s", kind, vocab_size, corpus.train_path)
        trained = PreTrainedTokenizerFast(
            tokenizer_object=_train_tokenizer(corpus.train_path, kind, vocab_size), **_SPECIAL_ROLES[kind]
        )
        directory.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
        trained.save_pretrained(temporary)
        try:
            os.replace(temporary, directory)
        except OSError:  # another process saved it first
            shutil.rmtree(temporary)
    return PreTrainedTokenizerFast.from_pretrained(directory)


# What a folder holds when it holds a tokenizer (transformers builds an empty one from a folder that has none).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer.model")


def load_pretrained_tokenizer(where: str, local: bool, what: str, hint: str = "") -> PreTrainedTokenizerFast:
    """The Hugging Face tokenizer saved with a checkpoint: a local folder (`local`), or a hub id the user named.
    BenchError, naming `what` (and adding `hint`), when there is none or it is not a fast (Rust) tokenizer."""
    if local and not any((Path(where) / name).is_file() for name in _TOKENIZER_FILES):
        raise BenchError(f"{what} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES[:4])}){hint}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local)
    except Exception as error:  # a missing or unreadable tokenizer is the user's input, whatever raised it
        if isinstance(error, OSError) and getattr(error, "errno", None) is not None:
            raise  # an I/O error of the machine
        text = str(error).strip()
        raise BenchError(f"cannot load the tokenizer of {what}: {text.splitlines()[0] if text else error!r}"
                         f"{hint}") from None
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise BenchError(f"the tokenizer of {what} ({type(tokenizer).__name__}) is not a fast (Rust) tokenizer, "
                         "which growbench needs to encode the corpus")
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise BenchError(f"{what} holds a tokenizer with no tokens but its special ones{hint}")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Token ids


@dataclass(frozen=True)
class TokenizedCorpus:
    train: np.ndarray  # 1-D memory-mapped int32 ids, every document followed by the separator
    val: np.ndarray
    tokenizer: PreTrainedTokenizerFast
    fingerprint: str  # hash of (corpus sha256, tokenizer): a cache key for anything derived from the ids


def _separator_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """The token that ends every document: eos (</s>, GPT-2's <|endoftext|>), else [SEP] (BERT)."""
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if separator is None:
        raise BenchError("the tokenizer has neither an eos nor a sep token to separate documents with")
    return separator


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Hash of what decides the ids (vocabulary, merges, normalisation), not of runtime padding settings."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return _sha256(json.dumps(state, sort_keys=True), str(_separator_id(tokenizer)))


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode_to_npy(text_path: Path, tokenizer: PreTrainedTokenizerFast, target: Path) -> None:
    """Encode a corpus file in parallel batches (Rust) into one int32 array, written atomically."""
    separator = _separator_id(tokenizer)
    chunks = []
    for paragraphs in _batched(_paragraphs(text_path), 4096):
        ids: list[int] = []
        for encoding in tokenizer.backend_tokenizer.encode_batch_fast(paragraphs, add_special_tokens=False):
            ids += encoding.ids
            ids.append(separator)
        chunks.append(np.array(ids, dtype=np.int32))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        np.save(file, tokens)
    os.replace(temporary, target)


def tokenize_corpus(corpus: Corpus, tokenizer: PreTrainedTokenizerFast, cache_dir: Path | None = None) -> TokenizedCorpus:
    """Token ids of both splits, encoded once into cached .npy files and opened memory-mapped."""
    fingerprint = _sha256(str(CORPUS_FORMAT), corpus.fingerprint["sha256"], tokenizer_fingerprint(tokenizer))
    directory = (cache_dir or cache_root()) / "tokens" / fingerprint[:16]
    arrays = {}
    for split, text_path in (("train", corpus.train_path), ("validation", corpus.val_path)):
        target = directory / f"{split}.npy"
        if not target.exists():
            _encode_to_npy(text_path, tokenizer, target)
        arrays[split] = np.load(target, mmap_mode="r")
    return TokenizedCorpus(arrays["train"], arrays["validation"], tokenizer, fingerprint)

