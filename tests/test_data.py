"""The data pipeline: corpus extraction and splits, tokenizers, cached token ids, batches and masking.

The full built-in corpus takes a minute to extract, so extraction is tested on a few stdlib packages.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import data
from bench.errors import BenchError
from bench.objective import IGNORE

STDLIB = Path(sysconfig.get_paths()["stdlib"])
STDLIB_PACKAGES = ("email", "json", "logging", "importlib", "concurrent", "urllib", "http")


@pytest.fixture(autouse=True)
def isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path / "cache"))


def stdlib_roots() -> list[data.PackageRoot]:
    return [data.PackageRoot(name, STDLIB / name, sys.version.split()[0]) for name in STDLIB_PACKAGES]


def paragraphs(path: Path) -> list[str]:
    return path.read_text().strip().split("\n\n")


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def corpus(module_cache) -> data.Corpus:
    return data.extract_docstring_corpus(stdlib_roots(), module_cache)


@pytest.fixture(scope="module")
def wordpiece(corpus, module_cache):
    return data.load_tokenizer(corpus, "wordpiece", 2000, cache_dir=module_cache)


@pytest.fixture(scope="module")
def bpe(corpus, module_cache):
    return data.load_tokenizer(corpus, "bpe", 2000, cache_dir=module_cache)


@pytest.fixture(scope="module")
def tokenized(corpus, wordpiece, module_cache) -> data.TokenizedCorpus:
    return data.tokenize_corpus(corpus, wordpiece, module_cache)


def write_paragraph_files(folder: Path, count: int, shared: str) -> dict[str, list[str]]:
    """`count` files of distinct paragraphs, each also holding `shared`."""
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for i in range(count):
        own = [f"File {i} paragraph {j} says something about topic {i * 7 + j}." for j in range(3)]
        (folder / f"part{i:02d}.txt").write_text("\n\n".join(own + [shared]) + "\n")
        contents[f"part{i:02d}.txt"] = own
    return contents


# --- corpus -------------------------------------------------------------------------------------


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path / "a"))
    assert data.cache_root() == tmp_path / "a"
    monkeypatch.delenv("GROWBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_root() == tmp_path / "xdg" / "growbench"


def test_prose_filter_keeps_prose_and_drops_code():
    docstring = """Return the running mean of a sequence of numbers, one value per input.

    The window slides over `values` one step at a time and never looks ahead.

    >>> running_mean([1, 2, 3])
    [1.0, 1.5, 2.0]
    ... continued doctest line here with enough words

    Parameters
    ----------
    values : list of float
        The numbers to average, in the order they arrive.
    window : int, optional

    result = {k: v[0] ** 2 for k, v in table.items() if v != []}

    .. note:: this directive is markup and not prose at all

    Too short.
    """
    kept = data.prose_paragraphs(docstring)
    assert kept == [
        "Return the running mean of a sequence of numbers, one value per input.",
        "The window slides over `values` one step at a time and never looks ahead.",
        "The numbers to average, in the order they arrive.",
    ]


def test_extraction_is_deterministic_cached_and_deduplicated(tmp_path, monkeypatch):
    package = tmp_path / "fake"
    package.mkdir()
    repeated = "This paragraph is copied into every module of the package on purpose."
    for i in range(6):
        (package / f"module{i}.py").write_text(
            f'"""Module number {i} explains how the sample package computes its answers.\n\n{repeated}\n"""\n'
            f'def f():\n    """>>> f()\n    {i}\n    """\n'
        )
    roots = [data.PackageRoot("fake", package, "1.0")]
    first = data.extract_docstring_corpus(roots, tmp_path / "one")
    second = data.extract_docstring_corpus(roots, tmp_path / "two", processes=1)
    assert first.fingerprint == second.fingerprint
    assert first.train_path.read_bytes() == second.train_path.read_bytes()
    assert first.fingerprint["kind"] == "builtin" and first.fingerprint["versions"] == {"fake": "1.0"}
    text = first.train_path.read_text() + first.val_path.read_text()
    assert text.count(repeated) == 1
    assert ">>>" not in text
    assert first.fingerprint["paragraphs"] == {"train": 6, "validation": 1}  # 6 module paragraphs + 1 shared
    limited = data.extract_docstring_corpus(roots, tmp_path / "one", max_files=2, processes=1)
    assert sum(limited.fingerprint["paragraphs"].values()) == 3

    def no_pool(*args, **kwargs):
        raise AssertionError("a cached corpus must not be extracted again")

    monkeypatch.setattr(data.corpus.multiprocessing, "Pool", no_pool)
    assert data.extract_docstring_corpus(roots, tmp_path / "one") == first


def test_stdlib_extraction_splits_without_leakage(corpus):
    train, validation = paragraphs(corpus.train_path), paragraphs(corpus.val_path)
    assert len(train) > 500 and len(validation) > 0
    assert not set(train) & set(validation)
    assert len(set(train)) == len(train)
    assert corpus.fingerprint["bytes"] == corpus.train_path.stat().st_size + corpus.val_path.stat().st_size
    assert corpus.fingerprint["sources"] == list(STDLIB_PACKAGES)
    assert not any(">>>" in paragraph or "----" in paragraph for paragraph in train)


def test_files_split_by_file_and_dedupe_across_splits(tmp_path):
    shared = "Every file of this corpus repeats this same closing paragraph word for word."
    contents = write_paragraph_files(tmp_path / "texts", 40, shared)
    corpus = data.load_corpus([str(tmp_path / "texts")], cache_dir=tmp_path / "cache")
    train, validation = set(paragraphs(corpus.train_path)), set(paragraphs(corpus.val_path))
    assert train and validation and not train & validation
    assert (paragraphs(corpus.train_path) + paragraphs(corpus.val_path)).count(shared) == 1
    for own in contents.values():
        assert set(own) <= train or set(own) <= validation, "a file's paragraphs must stay in one split"
    assert corpus.fingerprint["kind"] == "files" and len(corpus.fingerprint["sources"]) == 40
    again = data.load_corpus([str(tmp_path / "texts" / "*.txt")], cache_dir=tmp_path / "other")
    assert again.fingerprint["sha256"] == corpus.fingerprint["sha256"]


def test_single_file_splits_by_paragraph(tmp_path):
    text = "\n\n".join(f"Paragraph number {i} of the single file,\nwrapped over two lines." for i in range(300))
    (tmp_path / "one.txt").write_text(text)
    corpus = data.load_corpus([str(tmp_path / "one.txt")])
    train, validation = paragraphs(corpus.train_path), paragraphs(corpus.val_path)
    assert 0 < len(validation) < 30 and len(train) + len(validation) == 300
    assert "Paragraph number 0 of the single file,\nwrapped over two lines." in train + validation


def test_jsonl_and_globs(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("First plain text paragraph.\n\nSecond plain text paragraph.\n")
    records = [{"text": f"Record {i} of the JSON lines file.\n\nIts second paragraph {i}."} for i in range(3)]
    (folder / "b.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n")
    (folder / "ignored.csv").write_text("not,part,of,it\n")
    everything = data.load_corpus([str(folder)])
    text = everything.train_path.read_text() + everything.val_path.read_text()
    assert "Record 2 of the JSON lines file." in text and "First plain text paragraph." in text
    assert "not,part" not in text
    only_jsonl = data.load_corpus([str(folder / "*.jsonl")])
    assert only_jsonl.fingerprint["paragraphs"]["train"] + only_jsonl.fingerprint["paragraphs"]["validation"] == 6


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "does not exist"),
        ("empty.txt", b"\n\n  \n", "holds no text"),
        ("binary.txt", b"some text\x00\x01\x02 more", "binary"),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"), "not UTF-8"),
        ("bad.jsonl", b'{"text": "fine"}\nnot json\n', "line 2"),
        ("notext.jsonl", b'{"body": "no text field"}\n', "line 1"),
    ],
)
def test_bad_corpus_files_are_bench_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BenchError, match=message) as raised:
        data.load_corpus([str(path)])
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_hub_source_without_datasets_is_a_bench_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(BenchError, match="datasets"):
        data.load_corpus(["hf:wikitext:wikitext-2-raw-v1"])


# --- tokenizer ----------------------------------------------------------------------------------


def test_wordpiece_tokenizer_has_bert_specials_and_lowercases(wordpiece):
    assert len(wordpiece) <= 2000
    assert wordpiece.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (wordpiece.pad_token_id, wordpiece.cls_token_id, wordpiece.sep_token_id, wordpiece.mask_token_id) == (
        0, 2, 3, 4,
    )
    assert wordpiece("The Message")["input_ids"] == wordpiece("the message")["input_ids"]
    assert wordpiece("the message")["input_ids"][0] == 2 and wordpiece("the message")["input_ids"][-1] == 3
    assert "##e" in wordpiece.get_vocab() and set(wordpiece.get_added_vocab()) == set(wordpiece.all_special_tokens)


def test_bpe_tokenizer_has_roberta_specials_and_is_lossless(bpe):
    assert (bpe.bos_token_id, bpe.pad_token_id, bpe.eos_token_id, bpe.unk_token_id, bpe.mask_token_id) == (
        0, 1, 2, 3, 4,
    )
    assert bpe.cls_token_id == bpe.bos_token_id and bpe.sep_token_id == bpe.eos_token_id
    text = "Parse an e-mail message: héllo, wörld!  Two  spaces."
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text


def test_trained_tokenizer_is_cached_and_reused(tmp_path, monkeypatch, corpus):
    first = data.load_tokenizer(corpus, "bpe", 600, cache_dir=tmp_path)

    def no_training(*args):
        raise AssertionError("a cached tokenizer must not be trained again")

    monkeypatch.setattr(data.tokenizer, "_train_tokenizer", no_training)
    second = data.load_tokenizer(corpus, "bpe", 600, cache_dir=tmp_path)
    assert second.get_vocab() == first.get_vocab()
    [folder] = (tmp_path / "tokenizers").iterdir()
    assert folder.name.endswith(f"-v{data.TOKENIZER_FORMAT}"), "a tokenizer from older training code is not reused"
    with pytest.raises(AssertionError):
        data.load_tokenizer(corpus, "bpe", 700, cache_dir=tmp_path)  # another size is another tokenizer


TRAIN_BOTH_KINDS = """
import json, sys
from pathlib import Path
from bench import data
states = {kind: json.loads(data.tokenizer._train_tokenizer(Path(sys.argv[1]), kind, 2000).to_str())
          for kind in ("wordpiece", "bpe")}
print(json.dumps(states))
"""


def test_tokenizer_training_is_the_same_in_every_process(corpus):
    """The same text gives the same vocabulary, ids and merges in a fresh process, whatever its thread count.
    `tokenizers` hashes with a per-process random seed, so two trainings in one process prove less."""
    path = os.pathsep.join(filter(None, [str(Path(data.__file__).parents[2]), os.environ.get("PYTHONPATH")]))
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN_BOTH_KINDS, str(corpus.train_path)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": path, "RAYON_NUM_THREADS": threads},  # this `bench`, not another
        )
        for threads in ("1", "3")
    ]
    first, second = [json.loads(run.communicate(timeout=120)[0]) for run in runs]
    assert all(run.returncode == 0 for run in runs)
    for kind in ("wordpiece", "bpe"):
        vocab, other = first[kind]["model"]["vocab"], second[kind]["model"]["vocab"]
        moved = sorted(token for token in vocab.keys() | other.keys() if vocab.get(token) != other.get(token))
        assert not moved, f"{kind}: {len(moved)} tokens have other ids in another process, e.g. {moved[:5]}"
        assert first[kind] == second[kind]


def test_tokenizer_dir_loads_a_saved_tokenizer(tmp_path, corpus, wordpiece):
    wordpiece.save_pretrained(tmp_path / "saved")
    loaded = data.load_tokenizer(corpus, "bpe", 123, tokenizer_dir=str(tmp_path / "saved"))
    assert loaded.get_vocab() == wordpiece.get_vocab()
    with pytest.raises(BenchError, match="does not exist"):
        data.load_tokenizer(corpus, "bpe", 123, tokenizer_dir=str(tmp_path / "nowhere"))


# --- token ids ----------------------------------------------------------------------------------


def test_token_ids_are_cached_memory_mapped_documents_with_separators(
    tokenized, corpus, wordpiece, module_cache, monkeypatch
):
    assert isinstance(tokenized.train, np.memmap) and tokenized.train.dtype == np.int32
    first_two = paragraphs(corpus.train_path)[:2]
    expected = []
    for paragraph in first_two:
        expected += wordpiece(paragraph, add_special_tokens=False)["input_ids"] + [wordpiece.sep_token_id]
    assert tokenized.train[: len(expected)].tolist() == expected
    assert (tokenized.val == wordpiece.sep_token_id).sum() == corpus.fingerprint["paragraphs"]["validation"]

    def no_encoding(*args):
        raise AssertionError("cached token ids must not be encoded again")

    monkeypatch.setattr(data.tokenizer, "_encode_to_npy", no_encoding)
    again = data.tokenize_corpus(corpus, wordpiece, module_cache)
    assert again.fingerprint == tokenized.fingerprint
    np.testing.assert_array_equal(again.train, tokenized.train)


def test_token_fingerprint_depends_on_the_tokenizer(corpus, wordpiece, bpe):
    assert data.tokenizer_fingerprint(wordpiece) != data.tokenizer_fingerprint(bpe)


# --- batches ------------------------------------------------------------------------------------


def test_same_seed_and_step_give_the_same_batch_whatever_came_before(tokenized):
    args = (tokenized.train, tokenized.tokenizer, "mlm", 32, 8)
    stream = data.BatchStream(*args, seed=3)
    stream.batch(0), stream.batch(11)
    later = stream.batch(5)
    fresh = data.BatchStream(*args, seed=3).batch(5)
    for name in ("input_ids", "labels"):
        assert torch.equal(later[name], fresh[name])
    other_seed = data.BatchStream(*args, seed=4)
    assert not np.array_equal(other_seed.block_indices(5), stream.block_indices(5))
    assert not np.array_equal(stream.block_indices(5), stream.block_indices(6))


def test_each_epoch_visits_every_block_once(tokenized):
    stream = data.BatchStream(tokenized.val, tokenized.tokenizer, "causal", 16, 7, seed=0)
    count = stream.block_count
    steps = -(-2 * count // 7)  # two epochs
    order = np.concatenate([stream.block_indices(step) for step in range(steps)])
    np.testing.assert_array_equal(np.sort(order[:count]), np.arange(count))
    np.testing.assert_array_equal(np.sort(order[count:2 * count]), np.arange(count))
    assert not np.array_equal(order[:count], order[count:2 * count]), "each epoch has its own order"


def test_mlm_batches_frame_blocks_and_mask_only_stream_tokens(tokenized):
    tokenizer = tokenized.tokenizer
    stream = data.BatchStream(tokenized.train, tokenizer, "mlm", 32, 16, seed=1)
    batch = stream.batch(2)
    input_ids, labels = batch["input_ids"], batch["labels"]
    assert input_ids.shape == labels.shape == (16, 32) and input_ids.dtype == labels.dtype == torch.long
    assert (input_ids[:, 0] == tokenizer.cls_token_id).all() and (input_ids[:, -1] == tokenizer.sep_token_id).all()
    original = torch.tensor(np.stack([tokenized.train[i * 30:(i + 1) * 30] for i in stream.block_indices(2)]))
    inner_ids, inner_labels = input_ids[:, 1:-1], labels[:, 1:-1]
    scored = inner_labels != IGNORE
    assert (scored.sum(dim=1) == data.masked_per_row(30)).all() and (labels[:, [0, -1]] == IGNORE).all()
    assert torch.equal(inner_labels[scored], original.long()[scored])
    assert torch.equal(inner_ids[~scored], original.long()[~scored])


def test_causal_batches_are_raw_blocks_with_labels_equal_to_inputs(tokenized):
    stream = data.BatchStream(tokenized.train, tokenized.tokenizer, "causal", 24, 4, seed=0)
    batch = stream.batch(7)
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["input_ids"].shape == (4, 24)
    first = stream.block_indices(7)[0]
    assert batch["input_ids"][0].tolist() == tokenized.train[first * 24:(first + 1) * 24].tolist()


def test_masking_statistics_follow_bert(wordpiece):
    generator = torch.Generator().manual_seed(0)
    special = torch.tensor([wordpiece.cls_token_id, wordpiece.sep_token_id, wordpiece.pad_token_id])
    input_ids = torch.randint(5, len(wordpiece), (128, 512), generator=generator)
    input_ids[:, ::8] = special[torch.randint(3, (128, 64), generator=generator)]
    k = data.masked_per_row(448)  # the non-special positions of a row
    assert k == 67
    masked, labels = data.mask_tokens(input_ids, wordpiece, generator, k)
    is_special = torch.isin(input_ids, special)
    chosen = labels != IGNORE
    assert not (chosen & is_special).any() and torch.equal(masked[is_special], input_ids[is_special])
    assert torch.equal(labels[chosen], input_ids[chosen]) and torch.equal(masked[~chosen], input_ids[~chosen])
    assert (chosen.sum(dim=1) == k).all()
    for quarter in range(4):  # chosen uniformly: as often early in a row as late
        columns = slice(quarter * 128, (quarter + 1) * 128)
        assert abs(chosen[:, columns].sum() / (~is_special[:, columns]).sum() - k / 448) < 0.015
    to_mask = masked[chosen] == wordpiece.mask_token_id
    unchanged = masked[chosen] == input_ids[chosen]
    randomised = ~to_mask & ~unchanged
    assert abs(to_mask.float().mean() - 0.8) < 0.02
    assert abs(unchanged.float().mean() - 0.1) < 0.015 and abs(randomised.float().mean() - 0.1) < 0.015
    assert not torch.isin(masked[chosen][randomised], torch.tensor(wordpiece.all_special_ids)).any()


def test_validation_batches_are_fixed_and_bounded(tokenized):
    first = data.validation_set(tokenized, "mlm", 32, 10, min_predictions=58)  # 4 a row: 15 blocks, whole batches
    data.BatchStream(tokenized.train, tokenized.tokenizer, "mlm", 32, 10, seed=9).batch(0)
    second = data.validation_set(tokenized, "mlm", 32, 10, min_predictions=58)
    assert (first.blocks, first.masks, first.predictions) == (20, 1, 80)
    assert [len(batch["input_ids"]) for batch in first.batches] == [10, 10]
    for a, b in zip(first.batches, second.batches, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    available = len(tokenized.val) // 30
    everything = data.validation_set(tokenized, "mlm", 32, 1000, min_predictions=4 * available + 1, max_masks=2)
    assert (everything.blocks, everything.masks, everything.predictions) == (available, 2, 8 * available)
    assert sum(len(batch["input_ids"]) for batch in everything.batches) == 2 * available


def test_too_little_text_for_one_sequence_is_a_bench_error(tokenized):
    short = data.TokenizedCorpus(tokenized.train, tokenized.val[:10], tokenized.tokenizer, "short")
    with pytest.raises(BenchError, match="validation"):
        data.validation_set(short, "causal", 16, 4)
    with pytest.raises(BenchError, match="training"):
        data.BatchStream(tokenized.val[:10], tokenized.tokenizer, "causal", 16, 4, seed=0)
