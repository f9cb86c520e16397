"""The data every run trains and evaluates on: corpus, tokenizer, cached token ids, batches.

The built-in corpus is the English prose in the docstrings of the Python standard library and of the
packages growbench installs, so a benchmark runs offline with nothing to download. Everything costly
(extraction, tokenizer training, tokenization) happens once and is cached under `cache_root()`.
Every batch is a pure function of (seed, step), so all methods and seeds see the same data order.

`corpus` makes the text, `tokenizer` the tokenizer and the token ids, `batches` the batches, `reference` the
context-free reference lines of the validation loss; their public names are all importable from here.
"""

from bench.data.batches import (
    MASK_SHARE,
    MAX_VALIDATION_MASKS,
    MIN_VALIDATION_PREDICTIONS,
    MLM_PROBABILITY,
    RANDOM_SHARE,
    VALIDATION_SEED,
    BatchStream,
    ValidationSet,
    batch_recipe,
    mask_tokens,
    masked_per_row,
    scored_predictions,
    validation_set,
)
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
from bench.data.reference import REFERENCE_HOW, reference_losses, reference_warning, strongest_line
from bench.data.tokenizer import (
    TOKENIZER_FORMAT,
    TokenizedCorpus,
    load_pretrained_tokenizer,
    load_tokenizer,
    tokenize_corpus,
    tokenizer_fingerprint,
)

__all__ = [
    "BUILTIN_PACKAGES", "CORPUS_FORMAT", "MASK_SHARE", "MAX_VALIDATION_MASKS", "MIN_VALIDATION_PREDICTIONS",
    "MIN_WORDS", "MLM_PROBABILITY", "RANDOM_SHARE", "REFERENCE_HOW", "TOKENIZER_FORMAT", "VALIDATION_FRACTION",
    "VALIDATION_SEED", "BatchStream", "Corpus", "PackageRoot", "SourceUnit", "TokenizedCorpus", "ValidationSet",
    "batch_recipe", "builtin_package_roots", "cache_root", "extract_docstring_corpus", "load_corpus",
    "load_pretrained_tokenizer", "load_tokenizer", "mask_tokens", "masked_per_row", "prose_paragraphs",
    "reference_losses", "reference_warning", "scored_predictions", "strongest_line", "tokenize_corpus",
    "tokenizer_fingerprint", "validation_set",
]
