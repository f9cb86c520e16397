"""The command line end to end: bad input is one line and exit 2; a small comparison writes the run directory."""

import json

import pandas as pd
import pytest

from bench.cli import main

# A small corpus written by the test: enough text to train a tokenizer and a few steps on.
SENTENCES = [
    "The parser reads the configuration file and returns a dictionary of options.",
    "Each worker process handles one request at a time and reports its status.",
    "A tokenizer splits text into pieces that the model maps to vectors.",
    "Training stops when the validation loss no longer improves for several evaluations.",
    "The scheduler lowers the learning rate linearly until it reaches zero at the end.",
    "Weights are saved in the safetensors format so that loading never runs code.",
]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    for index in range(12):
        paragraphs = [" ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(4)) for _ in range(30)]
        (folder / f"doc{index}.txt").write_text("\n\n".join(f"{p} ({index}.{n})" for n, p in enumerate(paragraphs)))
    return folder


@pytest.mark.parametrize("argv, message", [
    (["compare", "--pair", "bert-nano:bert-huge"], "unknown size"),
    (["compare", "--pair", "bert-micro:bert-nano"], "shrinks"),
    (["compare", "--methods", "scratch,warp-drive"], "unknown method"),
    (["compare", "--budget-steps", "0"], "must be positive"),
    (["compare", "--corpus", "/nonexistent/corpus.txt", "--methods", "scratch"], "/nonexistent/corpus.txt"),
    (["compare", "--method-arg", "scratch.nothing=1", "--methods", "scratch"], "no setting"),
    (["check", "/nonexistent-run", "--baseline", "/nonexistent.json"], "does not exist"),
    (["pretrain", "--size", "bert-enormous"], "unknown size"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_list_shows_sizes_methods_collectors_and_prices(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("bert-base", "gpt2-medium", "scratch", "flops", "energy", "as of"):
        assert word in out


@pytest.mark.slow
def test_small_compare_writes_the_run_directory_and_resume_skips_finished_runs(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "compare.toml"  # options may come from a config file; the command line wins
    config.write_text('pair = "bert-nano:bert-micro"\nmethods = "scratch"\nseeds = 5\nno_progress = true\n')
    argv = ["compare", "--config", str(config), "--seeds", "2", "--budget-steps", "6", "--corpus", str(corpus),
            "--out", str(out)]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pair"] == "bert-nano:bert-micro" and manifest["seeds"] == [0, 1]
    assert list(manifest["methods"]) == ["scratch"]
    for seed in (0, 1):
        run = out / "runs" / f"scratch-s{seed}"
        assert json.loads((run / "status.json").read_text())["state"] == "done"
        curve = pd.read_csv(run / "curve.csv")
        assert curve["step"].iloc[0] == 0 and curve["step"].iloc[-1] == 6
        assert curve["val_loss"].iloc[-1] < curve["val_loss"].iloc[0]
        phases = pd.read_csv(run / "phases.csv")
        assert phases["flops_executed"].iloc[0] > 0 and phases["train_s"].iloc[0] > 0
        assert (run / "model" / "model.safetensors").exists()
    assert (out / "report.md").exists()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().out.count("done already, skipped") == 2
    assert main(argv) == 2  # the same folder without --resume is refused, nothing is overwritten


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["gpt2-nano:gpt2-micro", "roberta-nano:roberta-micro"])
def test_every_method_runs_on_the_gpt2_and_roberta_pairs(pair, corpus, tmp_path):
    out = tmp_path / "run"
    argv = ["compare", "--pair", pair, "--methods", "all,stackbert:progressive,bert2bert:fpi,ligo:fpi", "--seeds", "1",
            "--budget-steps", "8", "--parent-steps", "4", "--corpus", str(corpus), "--out", str(out), "--no-progress"]
    for method in ("ligo", "ligo:fpi"):
        argv += ["--method-arg", f"{method}.operator_steps=2", "--method-arg", f"{method}.operator_warmup_steps=1"]
    assert main(argv) == 0
    states = {path.parent.name: json.loads(path.read_text())["state"] for path in out.glob("runs/*/status.json")}
    assert len(states) == 9 and set(states.values()) == {"done"}, states


def test_all_means_every_method_that_is_not_a_variant_and_names_count_once():
    from bench.runner import method_list

    every = method_list("all")
    assert every[0] == "scratch" and sorted(every) == sorted(["scratch", "stackbert", "mslt", "bert2bert", "ki", "ligo"])
    mixed = method_list("ligo, all,ligo:fpi,ki")
    assert mixed == ["ligo", "scratch", *[name for name in every[1:] if name != "ligo"], "ligo:fpi"]
