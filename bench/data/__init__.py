"""The data every run trains and evaluates on: corpus, tokenizer, cached token ids, batches.

The built-in corpus is the English prose in the docstrings of the Python standard library and of the
packages growbench installs, so a benchmark runs offline with nothing to download. Everything costly
(extraction, tokenizer training, tokenization) happens once and is cached under `cache_root()`.
Every batch is a pure function of (seed, step), so all methods and seeds see the same data order.

`corpus` makes the text, `tokenizer` the tokenizer and the token ids, `batches` the batches; their public
names are all importable from here.
"""

from bench.data.batches import VALIDATION_SEED, BatchStream, mask_tokens, validation_batches
from bench.data.corpus import (
    BUILTIN_PACKAGES,
    CORPUS_FORMAT,
    MIN_WORDS,
    VALIDATION_FRACTION,
    Corpus,
    PackageRoot,
    SourceUnit,
    builtin_package_roots,
    cache_root,
    extract_docstring_corpus,
    load_corpus,
    prose_paragraphs,
)
from bench.data.tokenizer import (
    TOKENIZER_FORMAT,
    TokenizedCorpus,
    load_pretrained_tokenizer,
    load_tokenizer,
    tokenize_corpus,
    tokenizer_fingerprint,
)

__all__ = [
    "BUILTIN_PACKAGES", "CORPUS_FORMAT", "MIN_WORDS", "TOKENIZER_FORMAT", "VALIDATION_FRACTION", "VALIDATION_SEED",
    "BatchStream", "Corpus", "PackageRoot", "SourceUnit", "TokenizedCorpus", "builtin_package_roots", "cache_root",
    "extract_docstring_corpus", "load_corpus", "load_pretrained_tokenizer", "load_tokenizer", "mask_tokens", "prose_paragraphs",
    "tokenize_corpus", "tokenizer_fingerprint", "validation_batches",
]
