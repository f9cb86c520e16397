"""The data every run trains and evaluates on: corpus, tokenizer, cached token ids, batches.

The built-in corpus is the English prose in the docstrings of the Python standard library and of the
packages growbench installs, so a benchmark runs offline with nothing to download. Everything costly
(extraction, tokenizer training, tokenization) happens once and is cached under `cache_root()`.
Every batch is a pure function of (seed, step), so all methods and seeds see the same data order.
"""

from __future__ import annotations

import ast
import functools
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import sysconfig
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from bench.errors import BenchError
from bench.objective import IGNORE

log = logging.getLogger(__name__)

# Bump when extraction, filtering or splitting changes, so that stale caches are not reused.
CORPUS_FORMAT = 1
VALIDATION_FRACTION = 0.03  # of files (or of paragraphs, for a single file) held out for validation
MIN_WORDS = 6  # a shorter docstring paragraph is a heading or a fragment, not prose
VALIDATION_SEED = 0  # the validation masks are the same for every run


def cache_root() -> Path:
    """$GROWBENCH_CACHE, else $XDG_CACHE_HOME/growbench, else ~/.cache/growbench."""
    if os.environ.get("GROWBENCH_CACHE"):
        return Path(os.environ["GROWBENCH_CACHE"]).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg_cache) if xdg_cache else Path.home() / ".cache") / "growbench"


def _sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------
# Corpus


@dataclass(frozen=True)
class Corpus:
    train_path: Path  # UTF-8 text; paragraphs separated by one blank line
    val_path: Path
    fingerprint: dict  # kind, sources, versions, bytes, sha256, paragraphs per split


@dataclass(frozen=True)
class SourceUnit:
    """Paragraphs that go to the same split: one file, or one paragraph of a single-file corpus.
    `split` is fixed ("train" / "validation") where the source says so, else None: decided by `key`'s hash."""

    key: str
    paragraphs: list[str]
    split: str | None = None


def _hash_fraction(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _split_paragraphs(units: list[SourceUnit]) -> dict[str, list[str]]:
    """Split by unit (so no file is in both splits), then drop exact duplicates in unit order, across
    both splits at once, so no paragraph is in both either."""
    in_validation = [
        unit.split == "validation" if unit.split else _hash_fraction(unit.key) < VALIDATION_FRACTION for unit in units
    ]
    free = [i for i, unit in enumerate(units) if unit.split is None]
    if free and not any(in_validation):
        # A small corpus: hold out the unit with the lowest hash, so that validation is never empty.
        in_validation[min(free, key=lambda i: _hash_fraction(units[i].key))] = True
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    seen: set[str] = set()
    for unit, validation in zip(units, in_validation):
        for paragraph in unit.paragraphs:
            if paragraph not in seen:
                seen.add(paragraph)
                splits["validation" if validation else "train"].append(paragraph)
    return splits


def _cached_corpus(directory: Path) -> Corpus | None:
    marker = directory / "fingerprint.json"  # written last: its presence means the folder is complete
    if not marker.exists():
        return None
    return Corpus(directory / "train.txt", directory / "validation.txt", json.loads(marker.read_text()))


def _save_corpus(
    directory: Path | None, cache_dir: Path, units: list[SourceUnit], kind: str, sources: list[str], versions: dict
) -> Corpus:
    """Split, dedupe and write a corpus; `directory` None means: named by the content's hash."""
    splits = _split_paragraphs(units)
    names = ", ".join(sources)
    if not splits["train"] and not splits["validation"]:
        raise BenchError(f"corpus {names} holds no text")
    if not splits["train"] or not splits["validation"]:
        raise BenchError(f"corpus {names} is too small to split into training and validation text")
    texts = {split: ("\n\n".join(paragraphs) + "\n").encode() for split, paragraphs in splits.items()}
    digest = hashlib.sha256(texts["train"] + b"\0" + texts["validation"]).hexdigest()
    directory = directory or cache_dir / "corpus" / f"{kind}-{digest[:16]}"
    fingerprint = {
        "kind": kind, "sources": sources, "versions": versions,
        "bytes": sum(map(len, texts.values())), "sha256": digest,
        "paragraphs": {split: len(paragraphs) for split, paragraphs in splits.items()},
    }
    if not _cached_corpus(directory):  # the same text from other paths: same files, this fingerprint
        for split, text in texts.items():
            _write_atomic(directory / f"{split}.txt", text)
        _write_atomic(directory / "fingerprint.json", json.dumps(fingerprint, indent=1).encode())
    return Corpus(directory / "train.txt", directory / "validation.txt", fingerprint)


def load_corpus(sources: list[str] | None = None, cache_dir: Path | None = None) -> Corpus:
    """The built-in docstring corpus (`sources` None), or text files / globs / folders of .txt and .jsonl,
    or Hugging Face datasets given as `hf:NAME[:CONFIG]`."""
    cache_dir = cache_dir or cache_root()
    if not sources:
        return extract_docstring_corpus(builtin_package_roots(), cache_dir)
    hub = [source for source in sources if source.startswith("hf:")]
    if hub and len(hub) < len(sources):
        raise BenchError("a corpus is either hf: datasets or files, not both")
    if hub:
        units, versions = _hub_units(hub)
        return _save_corpus(None, cache_dir, units, "hf", hub, versions)
    files = list(dict.fromkeys(path.resolve() for source in sources for path in _source_files(source)))
    if len(files) == 1:
        units = [SourceUnit(paragraph, [paragraph]) for paragraph in _file_paragraphs(files[0])]
    else:
        # Keys relative to the files' common folder, so that moving the corpus keeps its split.
        common = Path(os.path.commonpath([file.parent for file in files]))
        units = [SourceUnit(file.relative_to(common).as_posix(), _file_paragraphs(file)) for file in files]
    return _save_corpus(None, cache_dir, units, "files", [str(file) for file in files], {})


# --- built-in corpus: docstring prose ---------------------------------------------------------

BUILTIN_PACKAGES = (
    "transformers", "torch", "numpy", "pandas", "matplotlib", "tokenizers", "safetensors", "pyarrow",
    "tqdm", "fvcore", "codecarbon", "sympy", "networkx",
)
_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__"}
_BLANK_LINE = re.compile(r"\n\s*\n")
_MARKUP_LINE = re.compile(r"^(>>>|\.\.)")  # doctest prompt or continuation, RST directive
_RULE_LINE = re.compile(r"^[-=~^*+#`'\"_.:|<> ]+$")  # RST underline, table border
_FIELD_LINE = re.compile(r"^[\w*]+(\s*,\s*[\w*]+)*\s+:(\s|$)")  # numpy-style parameter row "axis : int"
_CODE_CHARS = frozenset("=<>[]{}_*/\\|@#$%^&~`+")
_INLINE_CODE = re.compile(r"``[^`]+``|`[^`]+`")


def _is_code_line(line: str) -> bool:
    text = line.strip()
    if _MARKUP_LINE.match(text) or _RULE_LINE.match(text) or _FIELD_LINE.match(text):
        return True
    visible = _INLINE_CODE.sub("code", text).replace(" ", "")  # `name` in a sentence is still prose
    symbols = sum(char in _CODE_CHARS for char in visible)
    letters = sum(char.isalpha() for char in visible)
    return symbols > 0.08 * len(visible) or letters < 0.7 * len(visible)


def _is_prose(paragraph: str) -> bool:
    """Sentence-shaped (capital first, closing punctuation last), long enough, and mostly ASCII (English)."""
    ascii_chars = sum(char.isascii() for char in paragraph)
    return (
        paragraph[0].isupper() and paragraph[-1] in ".!?:)" and len(paragraph.split()) >= MIN_WORDS
        and ascii_chars >= 0.98 * len(paragraph)
    )


def prose_paragraphs(docstring: str) -> list[str]:
    """The prose paragraphs of a docstring, each on one line. Code-like lines (doctests, parameter rows,
    RST rules and the titles above them) are dropped and end a paragraph, so that a parameter's
    description is a paragraph of its own; only sentence-shaped paragraphs are kept."""
    paragraphs = []
    for block in _BLANK_LINE.split(docstring):
        lines = block.splitlines()
        run: list[str] = []
        for i, line in enumerate(lines + [""]):
            is_title = i + 1 < len(lines) and _RULE_LINE.match(lines[i + 1].strip())
            if line.strip() and not is_title and not _is_code_line(line):
                run.append(line)
                continue
            paragraph = " ".join(" ".join(run).split())
            if paragraph and _is_prose(paragraph):
                paragraphs.append(paragraph)
            run = []
    return paragraphs


def _module_prose(path: Path) -> list[str]:
    """Prose of every module, class and function docstring of one Python file, in `ast.walk` order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like in old code
            tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):  # not Python 3 we can parse
        return []
    paragraphs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                paragraphs += prose_paragraphs(docstring)
    return paragraphs


@dataclass(frozen=True)
class PackageRoot:
    """A tree of Python files to take docstrings from (test folders and site-packages skipped)."""

    name: str
    path: Path
    version: str

    def files(self) -> list[Path]:
        found = []
        for folder, subfolders, names in os.walk(self.path):
            subfolders[:] = sorted(name for name in subfolders if name not in _SKIPPED_DIRS)
            found += [Path(folder, name) for name in sorted(names) if name.endswith(".py")]
        return found


def builtin_package_roots() -> list[PackageRoot]:
    """The standard library and whichever of `BUILTIN_PACKAGES` are installed (found without importing)."""
    roots = [PackageRoot("python", Path(sysconfig.get_paths()["stdlib"]), platform.python_version())]
    for name in BUILTIN_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # without a version the cache could not tell two installs apart
        roots.append(PackageRoot(name, Path(spec.submodule_search_locations[0]), version))
    return roots


def extract_docstring_corpus(
    roots: list[PackageRoot], cache_dir: Path | None = None, max_files: int | None = None, processes: int = 2
) -> Corpus:
    """Docstring prose of `roots` (at most `max_files` files each), split by file, cached by roots and versions.

    Files are read in sorted order and the pool returns results in order, so the text is a function of
    the installed versions alone."""
    cache_dir = cache_dir or cache_root()
    sources = [root.name for root in roots]
    versions = {root.name: root.version for root in roots}
    key = _sha256(json.dumps([CORPUS_FORMAT, [(r.name, str(r.path), r.version) for r in roots], max_files]))
    directory = cache_dir / "corpus" / f"builtin-{key[:16]}"
    cached = _cached_corpus(directory)
    if cached:
        return cached
    files = [(root, path) for root in roots for path in root.files()[:max_files]]
    log.info("extracting the built-in corpus from %d files of %s (once; cached in %s)", len(files), sources, directory)
    with multiprocessing.Pool(processes) as pool:
        prose = pool.map(_module_prose, [path for _, path in files], chunksize=8)
    units = [
        SourceUnit(f"{root.name}/{path.relative_to(root.path).as_posix()}", paragraphs)
        for (root, path), paragraphs in zip(files, prose)
    ]
    return _save_corpus(directory, cache_dir, units, "builtin", sources, versions)


# --- user files and Hugging Face datasets -----------------------------------------------------


def _source_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise BenchError(f"corpus folder {source} holds no .txt or .jsonl files")
        return files
    if path.is_file():
        return [path]
    if glob.has_magic(source):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        if not matches:
            raise BenchError(f"corpus pattern {source} matches no files")
        return matches
    raise BenchError(f"corpus path {source} does not exist")


def _text_paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, each line trimmed."""
    blocks = _BLANK_LINE.split(text.strip())
    return [paragraph for block in blocks if (paragraph := "\n".join(line.strip() for line in block.splitlines()))]


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BenchError(f"cannot read corpus file {path}: {error.strerror}") from None
    if b"\0" in data:
        raise BenchError(f"corpus file {path} is binary (it contains NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BenchError(f"corpus file {path} is not UTF-8 text") from None


def _file_paragraphs(path: Path) -> list[str]:
    """Paragraphs of a .txt file, or of the "text" field of every line of a .jsonl file."""
    text = _read_text(path)
    if path.suffix != ".jsonl":
        return _text_paragraphs(text)
    paragraphs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise BenchError(f"corpus file {path}, line {number}, is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise BenchError(f'corpus file {path}, line {number}, has no "text" string')
        paragraphs += _text_paragraphs(record["text"])
    return paragraphs


def _hub_units(sources: list[str]) -> tuple[list[SourceUnit], dict]:
    """Records of Hugging Face datasets: their own validation split where they have one (test splits are
    never used), else a paragraph-hash split of their training records."""
    try:
        import datasets
    except ImportError:
        raise BenchError(f"corpus {sources[0]} needs the `datasets` library: pip install 'growbench[hf]'") from None
    units = []
    for source in sources:
        name, _, config = source.removeprefix("hf:").partition(":")
        try:
            dataset = datasets.load_dataset(name, config or None)
        except (OSError, ValueError) as error:  # not found, offline, unknown config
            raise BenchError(f"cannot load dataset {source}: {str(error).splitlines()[0]}") from None
        has_validation = "validation" in dataset
        for split in ("train", "validation"):
            if split not in dataset:
                continue
            if "text" not in dataset[split].column_names:
                raise BenchError(f'dataset {source} has no "text" column')
            for text in dataset[split]["text"]:
                paragraphs = _text_paragraphs(text)
                if has_validation:
                    units.append(SourceUnit(f"{source}/{split}", paragraphs, split))
                else:
                    units += [SourceUnit(paragraph, [paragraph]) for paragraph in paragraphs]
    return units, {"datasets": datasets.__version__}


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


def _paragraphs(path: Path) -> Iterator[str]:
    """The paragraphs of a corpus file, streamed."""
    with path.open(encoding="utf-8") as file:
        lines: list[str] = []
        for line in file:
            if line.strip():
                lines.append(line.rstrip("\n"))
            elif lines:
                yield "\n".join(lines)
                lines = []
        if lines:
            yield "\n".join(lines)


def _train_tokenizer(train_path: Path, kind: str, vocab_size: int) -> Tokenizer:
    """WordPiece with BERT's normalisation (lower case), or byte-level BPE as in RoBERTa and GPT-2."""
    special = list(_SPECIAL_TOKENS[kind])
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    else:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tokenizer.train_from_iterator(_paragraphs(train_path), trainer=trainer)
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
    directory = cache_dir / "tokenizers" / f"{kind}-{vocab_size}-{corpus.fingerprint['sha256'][:16]}"
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


# ----------------------------------------------------------------------------------------------
# Batches


def mask_tokens(
    input_ids: torch.Tensor, tokenizer: PreTrainedTokenizerFast, generator: torch.Generator, mlm_probability: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: pick `mlm_probability` of the non-special positions; of those 80% become the mask
    token, 10% a random non-special token, 10% stay. Labels are the original ids there, -100 elsewhere.
    The random draws have fixed shapes, so the result depends only on the ids and the generator's state."""
    vocab_size = len(tokenizer)
    is_special = torch.zeros(vocab_size, dtype=torch.bool)
    is_special[sorted(tokenizer.all_special_ids)] = True
    ordinary_ids = torch.nonzero(~is_special).squeeze(1)
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~is_special[input_ids]
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), input_ids.shape, generator=generator)]
    masked = torch.where(chosen & (action < 0.8), tokenizer.mask_token_id, input_ids)
    masked = torch.where(chosen & (action >= 0.9), random_ids, masked)
    labels = torch.where(chosen, input_ids, IGNORE)
    return masked, labels


@dataclass(frozen=True)
class _Framing:
    """How blocks of the token stream become model inputs: [CLS] block [SEP] (<s> block </s>) for MLM,
    the bare block for causal LM."""

    tokenizer: PreTrainedTokenizerFast
    objective: str
    seq_len: int

    def __post_init__(self):
        if self.objective not in ("mlm", "causal"):
            raise ValueError(f"objective must be 'mlm' or 'causal', got {self.objective!r}")
        if self.seq_len < (3 if self.objective == "mlm" else 2):
            raise BenchError(f"sequence length {self.seq_len} is too short")
        if self.objective == "mlm" and None in (self.tokenizer.mask_token_id, self._start_id, self._end_id):
            raise BenchError("masked-LM needs a tokenizer with mask, cls/bos and sep/eos tokens")

    @property
    def _start_id(self) -> int | None:
        tokenizer = self.tokenizer
        return tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id

    @property
    def _end_id(self) -> int | None:
        tokenizer = self.tokenizer
        return tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    @property
    def block_len(self) -> int:
        """Stream tokens per sequence."""
        return self.seq_len - 2 if self.objective == "mlm" else self.seq_len

    def block_count(self, tokens: np.ndarray) -> int:
        return len(tokens) // self.block_len

    def batch(self, tokens: np.ndarray, block_indices: Iterable[int], generator: torch.Generator):
        length = self.block_len
        rows = np.stack([tokens[index * length:(index + 1) * length] for index in block_indices])
        input_ids = torch.from_numpy(rows.astype(np.int64))
        if self.objective == "causal":
            return {"input_ids": input_ids, "labels": input_ids.clone()}
        column = torch.ones(len(input_ids), 1, dtype=torch.long)
        input_ids = torch.cat([column * self._start_id, input_ids, column * self._end_id], dim=1)
        input_ids, labels = mask_tokens(input_ids, self.tokenizer, generator)
        return {"input_ids": input_ids, "labels": labels}


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, block_count: int) -> np.ndarray:
    """The order of the blocks in one epoch: a fresh permutation per (seed, epoch)."""
    return np.random.default_rng(_seed(seed, 0, epoch)).permutation(block_count)


class BatchStream:
    """Training batches of `batch_size` blocks of `seq_len` tokens, a pure function of (seed, step).

    Batch s takes positions s*B .. s*B+B-1 of an endless sequence of epochs, each epoch a permutation
    of the non-overlapping blocks seeded by (seed, epoch); its masks come from a generator seeded by
    (seed, step). Nothing depends on which batches were asked for before."""

    def __init__(self, tokens: np.ndarray, tokenizer, objective: str, seq_len: int, batch_size: int, seed: int):
        self.tokens = tokens
        self.framing = _Framing(tokenizer, objective, seq_len)
        self.batch_size = batch_size
        self.seed = seed
        self.block_count = self.framing.block_count(tokens)
        if self.block_count == 0:
            raise BenchError(f"the training text has {len(tokens)} tokens, less than one sequence of {seq_len}")

    def block_indices(self, step: int) -> np.ndarray:
        positions = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(positions, self.block_count)
        return np.array([_epoch_order(self.seed, e, self.block_count)[o] for e, o in zip(epochs, offsets)])

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(_seed(self.seed, 1, step))
        return self.framing.batch(self.tokens, self.block_indices(step), generator)


def validation_batches(
    tokenized: TokenizedCorpus, objective: str, seq_len: int, batch_size: int, n_blocks: int = 256
) -> list[dict[str, torch.Tensor]]:
    """The fixed evaluation set: the first `n_blocks` blocks of the validation split (fewer if it is
    shorter), masked with a fixed generator, whatever the run's seed."""
    framing = _Framing(tokenized.tokenizer, objective, seq_len)
    count = min(n_blocks, framing.block_count(tokenized.val))
    if count == 0:
        raise BenchError(f"the validation text has {len(tokenized.val)} tokens, less than one sequence of {seq_len}")
    batch = framing.batch(tokenized.val, range(count), torch.Generator().manual_seed(VALIDATION_SEED))
    return [
        {name: tensor[start:start + batch_size] for name, tensor in batch.items()}
        for start in range(0, count, batch_size)
    ]
