import pytest
import torch

# Tiny models run fastest on one thread; two threads fight over two cores with pytest itself.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A small text corpus, and a growbench cache of the test module's own (tokenizer and parent trained once)."""
    root = tmp_path_factory.mktemp("corpus")
    folder = root / "corpus"
    folder.mkdir()
    words = ["the", "parser", "reads", "each", "file", "and", "returns", "a", "table", "of", "options", "for",
             "every", "worker", "in", "turn"]
    for index in range(6):
        lines = [" ".join(words[(index + k) % len(words):] + words[:(index + k) % len(words)]) for k in range(60)]
        (folder / f"doc{index}.txt").write_text("\n\n".join(f"{line} ({index}.{n})" for n, line in enumerate(lines)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROWBENCH_CACHE", str(root / "cache"))
        yield folder
