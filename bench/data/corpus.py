"""The corpus: the built-in docstring prose, text files or Hugging Face datasets, split into training and
validation text and cached under `cache_root()`, where everything costly of the data pipeline is kept."""

from __future__ import annotations

import ast
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
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError

log = logging.getLogger(__name__)

# Bump when extraction, filtering or splitting changes, so that stale caches are not reused.
CORPUS_FORMAT = 1
VALIDATION_FRACTION = 0.03  # of files (or of paragraphs, for a single file) held out for validation
MIN_WORDS = 6  # a shorter docstring paragraph is a heading or a fragment, not prose


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


# --- reading a corpus file back ---------------------------------------------------------------


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
