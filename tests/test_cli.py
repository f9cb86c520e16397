"""The command line end to end: bad input is one line and exit 2; a small comparison writes the run directory."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main


@pytest.mark.parametrize("argv, message", [
    (["compare", "--pair", "bert-nano:bert-huge"], "unknown size"),
    (["compare", "--pair", "bert-micro:bert-nano"], "shrinks"),
    (["compare", "--methods", "scratch,warp-drive"], "unknown method"),
    (["compare", "--budget-steps", "0"], "must be a positive whole number"),
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
def test_every_method_runs_on_the_gpt2_and_roberta_pairs(pair, corpus, tmp_path, monkeypatch):
    from bench import calibration

    monkeypatch.setattr(calibration, "ROUNDS", 1)  # the calibration's statistics are not what this tests
    monkeypatch.setattr(calibration, "REPEATS", 1)
    out = tmp_path / "run"
    argv = ["compare", "--pair", pair, "--methods", "all,stackbert:progressive,bert2bert:fpi,ligo:fpi", "--seeds", "1",
            "--budget-steps", "8", "--parent-steps", "4", "--eval-points", "2", "--corpus", str(corpus), "--out", str(out),
            "--no-progress"]
    for method in ("ligo", "ligo:fpi"):
        argv += ["--method-arg", f"{method}.operator_steps=2", "--method-arg", f"{method}.operator_warmup_steps=1"]
    assert main(argv) == 0
    states = {path.parent.name: json.loads(path.read_text())["state"] for path in out.glob("runs/*/status.json")}
    assert len(states) == 9 and set(states.values()) == {"done"}, states


@pytest.mark.slow
def test_pretrain_and_grow_take_a_micro_batch(corpus, tmp_path, capsys, monkeypatch):
    """Micro-batches change how a step runs, not what it costs: a parent pretrained in them spends the same FLOPs
    per step, and is cached under its own key; `bench grow` takes them too. GPT-2, because a causal LM scores every
    position: an MLM's head runs on the masked ones only, which one micro-batch holds a random share of."""
    from bench.runner import prepare

    loops = []
    real_loop_config = prepare.loop_config
    monkeypatch.setattr(prepare, "loop_config", lambda *args, **kwargs: loops.append(
        real_loop_config(*args, **kwargs)) or loops[-1])
    parents = {}
    for micro_batch in ([], ["--micro-batch", "4"]):
        assert main(["pretrain", "--size", "gpt2-nano", "--steps", "2", "--corpus", str(corpus), "--no-progress",
                     *micro_batch]) == 0
        parents[bool(micro_batch)] = Path(re.search(r"parent: (\S+)/model", capsys.readouterr().out)[1])
    assert [loop.micro_batch for loop in loops] == [None, 4]
    assert parents[True] != parents[False] and parents[True].parent == tmp_path / "cache" / "parents"
    per_step = {key: pd.read_csv(folder / "phases.csv").eval("flops_executed / steps") for key, folder in parents.items()}
    assert per_step[True].tolist() == per_step[False].tolist()
    assert main(["grow", "--method", "ligo", "--method-arg", "ligo.operator_steps=1", "--from",
                 str(parents[True] / "model"), "--to", "gpt2-micro", "--out", str(tmp_path / "grown"), "--corpus",
                 str(corpus), "--micro-batch", "8", "--no-progress"]) == 0
    assert loops[-1].micro_batch == 8 and (tmp_path / "grown" / "model" / "model.safetensors").exists()


@pytest.fixture
def captured_config(tmp_path, monkeypatch):
    """runner.compare replaced by a stub that keeps the CompareConfig it got and returns `folder`."""
    from bench import runner

    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path / "cache"))
    seen = {}

    def compare(config, echo=print):
        seen["config"] = config
        return seen.get("returns", config.out)

    monkeypatch.setattr(runner, "compare", compare)
    return seen


def test_the_run_directory_flags_reach_the_comparison(captured_config, tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from bench import runner

    monkeypatch.setattr(runner, "report", lambda out, target=None: SimpleNamespace(text="the report"))
    out = tmp_path / "run"
    argv = ["compare", "--methods", "scratch,bert2bert:fpi", "--seeds", "3", "--out", str(out), "--resume", "--repair",
            "--prepare", "--only", "bert2bert:fpi-s2,scratch-s0,bert2bert_fpi-s2", "--checkpoint-every", "2.5",
            "--keep-checkpoints", "--eval-points", "7"]
    assert main(argv) == 0
    config = captured_config["config"]
    assert (config.resume, config.repair, config.prepare_only, config.keep_checkpoints) == (True, True, True, True)
    assert config.only == ["bert2bert_fpi-s2", "scratch-s0"] and config.checkpoint_every == 2.5
    assert config.eval_points == 7 and config.out == out
    stdout = capsys.readouterr().out
    assert "prepared" in stdout and "report" not in stdout.replace("--", "")  # --prepare builds no report
    assert main(["compare", "--methods", "scratch", "--out", str(out), "--fresh"]) == 0
    config = captured_config["config"]
    assert config.fresh and not config.resume and config.only is None and config.checkpoint_every == 10.0


def test_only_prints_the_report_once_every_run_is_done(captured_config, tmp_path, capsys):
    from test_report import Spec, curve_loss, make_run_dir

    run_dir = make_run_dir(tmp_path / "run", {"scratch": Spec(curve_loss(3.0, 10.0, 3.0), needs_parent=False)},
                           seeds=(0,), parent=False)
    captured_config["returns"] = run_dir
    argv = ["compare", "--methods", "scratch", "--out", str(run_dir), "--only", "scratch-s0"]
    assert main([*argv, "--seeds", "2"]) == 0
    stdout = capsys.readouterr().out
    assert "1 run(s) not finished: scratch-s1" in stdout and not (run_dir / "report.md").exists()
    assert main([*argv, "--seeds", "1"]) == 0
    assert (run_dir / "report.md").exists() and "results:" in capsys.readouterr().out


def test_check_and_baseline_pass_allow_incomplete(tmp_path, monkeypatch, capsys):
    import bench.check

    seen = []
    monkeypatch.setattr(bench.check, "write_baseline", lambda run_dir, out, **kw: seen.append(("baseline", kw)))

    class Result:
        ok, text, failures = True, "ok", []

    monkeypatch.setattr(bench.check, "check", lambda run_dir, baseline, **kw: seen.append(("check", kw)) or Result())
    assert main(["baseline", str(tmp_path), "--out", str(tmp_path / "b.json"), "--allow-incomplete"]) == 0
    assert main(["check", str(tmp_path), "--baseline", str(tmp_path / "b.json")]) == 0
    assert seen == [("baseline", {"allow_incomplete": True, "reproductions": []}), ("check", {"allow_incomplete": False})]


def test_the_command_line_wins_over_the_config_files_budget_and_run_directory_choice(captured_config, tmp_path,
                                                                                     monkeypatch):
    from types import SimpleNamespace

    from bench import runner

    monkeypatch.setattr(runner, "report", lambda out, target=None: SimpleNamespace(text="the report"))
    monkeypatch.chdir(tmp_path)
    config_file = tmp_path / "compare.toml"
    config_file.write_text('budget_steps = 5\nresume = true\nmethods = "scratch"\nseeds = 2\nlr = 1\n'
                           'corpus = ["a.txt"]\n')
    (tmp_path / "a.txt").write_text("text\n")
    argv = ["compare", "--config", str(config_file), "--out", str(tmp_path / "run")]
    assert main([*argv, "--budget", "1e12", "--fresh"]) == 0
    config = captured_config["config"]
    assert (config.budget_value, config.budget_steps, config.fresh, config.resume) == (1e12, None, True, False)
    assert config.seeds == 2 and config.lr == 1.0 and config.data.corpus == ["a.txt"]
    assert main(argv) == 0
    config = captured_config["config"]
    assert (config.budget_value, config.budget_steps, config.fresh, config.resume) == (None, 5, False, True)


def test_all_means_every_method_that_is_not_a_variant_and_names_count_once():
    from bench.runner import method_list

    every = method_list("all")
    assert every[0] == "scratch" and sorted(every) == sorted(["scratch", "stackbert", "mslt", "bert2bert", "ki", "ligo"])
    mixed = method_list("ligo, all,ligo:fpi,ki")
    assert mixed == ["ligo", "scratch", *[name for name in every[1:] if name != "ligo"], "ligo:fpi"]
