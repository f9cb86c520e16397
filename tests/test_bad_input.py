"""Bad input, unusable output locations and environment faults, each through `bench.cli.main` in-process.

Every bad-input case must: exit 2, print exactly one line on stderr and no traceback, fail before anything is
trained (most before any data is prepared), and leave a finished run directory it points at byte for byte as it
was. Environment faults (a full disk) exit 3 with two lines: the error, and for `compare` the command that
continues (`--resume`). A read-only folder or a denied permission is simulated at the write (an OSError raised
where the temporary file is created), since chmod does not stop root; the real chmod variants run as non-root.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_report import make_run_dir

from bench.cli import main
from bench.errors import RunsFailed

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

SENTENCES = [
    "The parser reads the configuration file and returns a dictionary of options.",
    "Each worker process handles one request at a time and reports its status.",
    "A tokenizer splits text into pieces that the model maps to vectors.",
    "Training stops when the validation loss no longer improves for several evaluations.",
]


@dataclass
class Env:
    root: Path
    run: Path  # a finished run directory (synthetic, as the loop writes it)
    file: Path  # a plain text file
    binary: Path  # bytes that are no text
    empty: Path  # an empty folder
    foreign: Path  # a folder holding something that is not a comparison
    corpus: Path  # a small text corpus
    baseline: Path  # a valid baseline of `run`
    new: Path | None = None  # a path that does not exist yet, one per test

    def parent(self) -> Path:
        """A saved bert-nano checkpoint (a parent to grow from), made on first use."""
        folder = self.root / "parent"
        if not folder.exists():
            from bench.sizes import get_size

            get_size("bert-nano").build(300, 64, 0, 0).save_pretrained(folder, safe_serialization=True)
        return folder

    def fill(self, argv: list[str]) -> list[str]:
        names = {"run": self.run, "file": self.file, "binary": self.binary, "empty": self.empty,
                 "foreign": self.foreign, "corpus": self.corpus, "baseline": self.baseline, "new": self.new,
                 "root": self.root}
        filled = []
        for token in argv:
            if "{parent}" in token:
                token = token.replace("{parent}", str(self.parent()))
            filled.append(token.format(**names))
        return filled


@pytest.fixture(scope="module")
def module_env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad-input")
    run = make_run_dir(root / "run")
    (root / "notes.txt").write_text("not a folder\n")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (root / "empty").mkdir()
    (root / "foreign").mkdir()
    (root / "foreign" / "thesis.tex").write_text("\\documentclass{article}\n")
    corpus = root / "corpus"
    corpus.mkdir()
    for index in range(6):
        (corpus / f"doc{index}.txt").write_text("\n\n".join(
            f"{' '.join(SENTENCES[(index + k) % 4] for k in range(3))} ({index}.{n})" for n in range(20)))
    from bench.check import write_baseline

    baseline = root / "baseline.json"
    write_baseline(run, baseline)
    return Env(root, run, root / "notes.txt", root / "blob.bin", root / "empty", root / "foreign", corpus, baseline)


@pytest.fixture
def env(module_env, tmp_path, monkeypatch) -> Env:
    monkeypatch.setenv("GROWBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a default --out (reports/...) lands here
    module_env.new = tmp_path / "new"
    return module_env


def snapshot(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _raise_at_mkstemp(monkeypatch, code: int) -> None:
    """Every atomic write fails where its temporary file is created, as in a read-only folder."""
    def mkstemp(*args, dir=None, **kwargs):
        raise OSError(code, os.strerror(code), str(Path(dir or ".") / ".tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _no_write_access(monkeypatch) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode & os.W_OK else real(path, mode, **kw))


@dataclass
class Case:
    argv: list[str]
    message: str  # a piece of the one line on stderr
    run_dir: bool = False  # the case points at the finished run directory: it must stay unchanged
    config: str | None = None  # TOML written to a file, passed as --config
    patch: str | None = None  # "readonly", "denied", "no-write-access"
    skip: str | None = None


COMPARE = ["compare", "--out", "{run}", "--methods", "scratch", "--no-progress"]

CASES: dict[str, Case] = {
    # --- numbers
    "lr-nan": Case([*COMPARE, "--lr", "nan"], "--lr: must be a finite number above 0", True),
    "lr-negative": Case([*COMPARE, "--lr", "-1"], "--lr: must be a finite number above 0", True),
    "lr-zero": Case([*COMPARE, "--lr", "0"], "--lr: must be a finite number above 0", True),
    "lr-inf": Case([*COMPARE, "--lr", "inf"], "--lr: must be a finite number above 0", True),
    "seeds-zero": Case([*COMPARE, "--seeds", "0"], "--seeds: must be a positive whole number", True),
    "seeds-fraction": Case([*COMPARE, "--seeds", "1.5"], "--seeds: must be a positive whole number", True),
    "parent-steps-zero": Case([*COMPARE, "--parent-steps", "0"], "--parent-steps: must be a positive", True),
    "eval-points-negative": Case([*COMPARE, "--eval-points", "-2"], "--eval-points: must be a positive", True),
    "budget-steps-zero": Case([*COMPARE, "--budget-steps", "0"], "--budget-steps: must be a positive", True),
    "budget-steps-negative": Case([*COMPARE, "--budget-steps", "-3"], "--budget-steps: must be a positive", True),
    "budget-nan": Case([*COMPARE, "--budget", "nan"], "--budget: must be a finite number above 0", True),
    "budget-inf": Case([*COMPARE, "--budget", "inf"], "--budget: must be a finite number above 0", True),
    "budget-negative": Case([*COMPARE, "--budget=-1e13"], "--budget: must be a finite number above 0", True),
    "budget-seconds-words": Case([*COMPARE, "--budget-seconds", "soon"], "--budget-seconds: must be", True),
    "two-budgets": Case([*COMPARE, "--budget", "1e13", "--budget-steps", "5"], "not allowed with", True),
    "checkpoint-every-zero": Case([*COMPARE, "--checkpoint-every", "0"], "--checkpoint-every: must be", True),
    # --- pair and methods
    "unknown-size": Case([*COMPARE, "--pair", "bert-nano:bert-huge"], "unknown size", True),
    "pair-shrinks": Case([*COMPARE, "--pair", "bert-micro:bert-nano"], "shrinks", True),
    "pair-without-colon": Case([*COMPARE, "--pair", "bert-nano"], "a pair is SMALL:LARGE", True),
    "pair-mixes-families": Case([*COMPARE, "--pair", "bert-nano:gpt2-micro"], "mixes families", True),
    "unknown-method": Case([*COMPARE, "--methods", "scratch,warp-drive"], "unknown method 'warp-drive'", True),
    "no-method": Case([*COMPARE, "--methods", " , "], "names no method", True),
    # --- method settings, all checked before anything is prepared
    "method-arg-typo-in-method": Case([*COMPARE, "--methods", "mslt", "--method-arg", "msl.growth_share=0.3"],
                                      "method 'msl' is not among --methods (mslt); did you mean mslt?", True),
    "method-arg-method-not-chosen": Case([*COMPARE, "--method-arg", "ligo.operator_steps=3"],
                                         "method 'ligo' is not among --methods (scratch)", True),
    "method-arg-readme-growth-fraction": Case([*COMPARE, "--methods", "mslt", "--method-arg",
                                               "mslt.growth_fraction=0.3"], "has no setting 'growth_fraction'", True),
    "method-arg-share-above-one": Case([*COMPARE, "--methods", "mslt", "--method-arg", "mslt.growth_share=2"],
                                       "mslt.growth_share must be in (0, 1)", True),
    "method-arg-wrong-type": Case([*COMPARE, "--methods", "ligo", "--method-arg", "ligo.operator_steps=1.5"],
                                  "ligo.operator_steps='1.5' is not a valid int", True),
    "method-arg-nan": Case([*COMPARE, "--methods", "ki", "--method-arg", "ki.temperature=nan"],
                           "ki.temperature must be > 0, got nan", True),
    "method-arg-infinite": Case([*COMPARE, "--methods", "ki", "--method-arg", "ki.temperature=inf"],
                                "ki.temperature must be a finite number", True),
    "method-arg-without-value": Case([*COMPARE, "--methods", "mslt", "--method-arg", "mslt.growth_share"],
                                     "--method-arg takes KEY=VALUE", True),
    "method-arg-unknown-choice": Case([*COMPARE, "--methods", "bert2bert", "--method-arg", "bert2bert.width=wide"],
                                      "bert2bert.width must be aki or fpi", True),
    "method-arg-unknown-schedule": Case([*COMPARE, "--methods", "stackbert", "--method-arg",
                                         "stackbert.schedule=warm"], "stackbert.schedule must be one of continue, rewarm",
                                        True),
    "method-arg-unknown-optimizer": Case([*COMPARE, "--methods", "mslt", "--method-arg", "mslt.optimizer=keep"],
                                         "mslt.optimizer must be one of fresh, carry", True),
    "method-arg-lr-scale-zero": Case([*COMPARE, "--methods", "ligo", "--method-arg", "ligo.lr_scale=0"],
                                     "ligo.lr_scale must be a finite number above 0", True),
    "method-arg-too-many-layers": Case([*COMPARE, "--methods", "bert2bert", "--method-arg",
                                        "bert2bert.block_layers=9"], "exceeds bert-micro's 4 layers", True),
    "method-arg-steps-below-minus-one": Case([*COMPARE, "--methods", "ligo", "--method-arg",
                                              "ligo.operator_steps=-2"], "operator_steps >= 0 (or -1", True),
    "method-arg-alpha-symmetric": Case([*COMPARE, "--methods", "stackbert", "--method-arg", "stackbert.alpha=0.5"],
                                       "stackbert.alpha must be in (0.5, 1)", True),
    "method-arg-distil-zero": Case([*COMPARE, "--methods", "ki", "--method-arg", "ki.distil_fraction=0"],
                                   "ki.distil_fraction must be in (0, 1)", True),
    "method-arg-distil-one": Case([*COMPARE, "--methods", "ki", "--method-arg", "ki.distil_fraction=1"],
                                  "ki.distil_fraction must be in (0, 1)", True),
    "method-arg-progressive-stage-zero": Case([*COMPARE, "--methods", "stackbert:progressive", "--method-arg",
                                               "stackbert:progressive.stage1_share=0"], "must be > 0", True),
    # --- run selection and the run directory
    "only-bad-name": Case([*COMPARE, "--only", "scratch"], "a run name is METHOD-sSEED", True),
    "only-method-not-chosen": Case([*COMPARE, "--only", "ligo-s0"], "method ligo is not among --methods", True),
    "only-seed-out-of-range": Case([*COMPARE, "--seeds", "3", "--only", "scratch-s3"],
                                   "seed 3 is out of range; --seeds 3 runs seeds 0 to 2", True),
    "only-empty": Case([*COMPARE, "--only", ","], "--only names no run", True),
    "repair-without-resume": Case([*COMPARE, "--repair"], "it needs --resume", True),
    "fresh-with-resume": Case([*COMPARE, "--fresh", "--resume"], "not allowed with argument --fresh", True),
    "existing-run-dir-without-resume": Case(COMPARE, "already holds a comparison", True),
    "fresh-on-a-folder-that-is-no-comparison": Case(["compare", "--methods", "scratch", "--out", "{foreign}",
                                                     "--fresh"], "does not hold a comparison"),
    "out-is-a-file": Case(["compare", "--methods", "scratch", "--out", "{file}"], "is a file, not a folder"),
    "out-below-a-file": Case(["compare", "--methods", "scratch", "--out", "{file}/run"], "is a file, not a folder"),
    "out-not-writable": Case(["compare", "--methods", "scratch", "--out", "{new}"], "cannot write in",
                             patch="no-write-access"),
    # --- data, parent, prices, country, device
    "corpus-missing": Case([*COMPARE, "--corpus", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt", True),
    "corpus-binary": Case(["compare", "--methods", "scratch", "--out", "{new}", "--corpus", "{binary}"],
                          "is binary"),
    "corpus-folder-without-text": Case(["compare", "--methods", "scratch", "--out", "{new}", "--corpus", "{empty}"],
                                       "holds no .txt or .jsonl files"),
    "tokenizer-missing": Case([*COMPARE, "--tokenizer", "/nonexistent/tokenizer"], "tokenizer folder", True),
    "small-from-missing-absolute-path": Case([*COMPARE, "--methods", "ligo", "--small-from", "/nonexistent/parent"],
                                             "parent checkpoint /nonexistent/parent does not exist", True),
    "small-from-is-a-file": Case([*COMPARE, "--methods", "ligo", "--small-from", "{file}"], "is a file", True),
    "price-file-binary": Case([*COMPARE, "--price-file", "{binary}"], "is binary", True),
    "price-file-missing": Case([*COMPARE, "--price-file", "/nonexistent/prices.toml"], "cannot read price file", True),
    "price-file-not-toml": Case([*COMPARE, "--price-file", "{file}"], "is not valid TOML", True),
    "price-not-a-number": Case([*COMPARE, "--price", "H100=cheap"], "--price H100=cheap: not a number", True),
    "price-negative": Case([*COMPARE, "--price", "H100=-1"], "must be a number above 0", True),
    "price-without-value": Case([*COMPARE, "--price", "H100"], "--price takes KEY=VALUE", True),
    "country-unknown": Case([*COMPARE, "--country", "XYZ"], "unknown country 'XYZ'", True),
    "device-unknown": Case([*COMPARE, "--device", "tpu"], "invalid choice: 'tpu'", True),
    "device-cuda-without-cuda": Case([*COMPARE, "--device", "cuda"], "torch sees no CUDA device", True,
                                     skip="a CUDA device is present" if torch.cuda.is_available() else None),
    # --- the config file: each value has the option's type
    "config-missing": Case([*COMPARE, "--config", "/nonexistent/compare.toml"], "does not exist", True),
    "config-not-toml": Case(COMPARE, "is not valid TOML", True, config="methods = = scratch\n"),
    "config-methods-a-list": Case(COMPARE, "methods must be a string", True, config='methods = ["scratch"]\n'),
    "config-seeds-fraction": Case(COMPARE, "seeds must be a whole number", True, config="seeds = 1.5\n"),
    "config-seeds-zero": Case(COMPARE, "seeds must be a positive whole number", True, config="seeds = 0\n"),
    "config-pair-a-number": Case(COMPARE, "pair must be a string", True, config="pair = 3\n"),
    "config-corpus-a-string": Case(COMPARE, "corpus must be a list of strings", True, config='corpus = "a.txt"\n'),
    "config-lr-a-string": Case(COMPARE, "lr must be a number", True, config='lr = "fast"\n'),
    "config-lr-negative": Case(COMPARE, "lr must be a finite number above 0", True, config="lr = -0.1\n"),
    "config-resume-a-string": Case(COMPARE, "resume must be true or false", True, config='resume = "yes"\n'),
    "config-device-unknown": Case(COMPARE, "device must be one of auto, cpu, cuda", True, config='device = "tpu"\n'),
    "config-unknown-option": Case(COMPARE, "unknown option(s) colour", True, config='colour = "blue"\n'),
    "config-method-arg-not-a-list": Case(COMPARE, "method_arg must be a list of strings", True,
                                         config='method_arg = "mslt.alpha=0.7"\n'),
    # --- the command line itself
    "unknown-command": Case(["frobnicate"], "invalid choice: 'frobnicate'"),
    "no-command": Case([], "required: command"),
    "unknown-option": Case([*COMPARE, "--colour", "blue"], "unrecognized arguments: --colour blue", True),
    # --- report, check, baseline
    "report-not-a-run-dir": Case(["report", "{empty}"], "manifest.json does not exist"),
    "report-missing-folder": Case(["report", "/nonexistent/run"], "does not exist"),
    "report-target-nan": Case(["report", "{run}", "--target", "nan"], "--target: must be a finite number", True),
    "report-read-only-folder": Case(["report", "{run}"], "Read-only file system", True, patch="readonly"),
    "check-baseline-missing": Case(["check", "{run}", "--baseline", "/nonexistent/baseline.json"],
                                   "/nonexistent/baseline.json does not exist", True),
    "check-baseline-not-json": Case(["check", "{run}", "--baseline", "{file}"], "is not valid JSON", True),
    "check-baseline-binary": Case(["check", "{run}", "--baseline", "{binary}"], "is not valid JSON", True),
    "check-not-a-run-dir": Case(["check", "{empty}", "--baseline", "{baseline}"], "does not exist"),
    "baseline-out-is-a-folder": Case(["baseline", "{run}", "--out", "{empty}"], "is a folder, not a file", True),
    "baseline-out-below-a-file": Case(["baseline", "{run}", "--out", "{file}/b.json"], "is a file, not a folder",
                                      True),
    "baseline-read-only-folder": Case(["baseline", "{run}", "--out", "{new}/b.json"], "Read-only file system", True,
                                      patch="readonly"),
    "baseline-permission-denied": Case(["baseline", "{run}", "--out", "{new}/b.json"], "Permission denied", True,
                                       patch="denied"),
    "baseline-not-a-run-dir": Case(["baseline", "{foreign}", "--out", "{new}/b.json"], "manifest.json"),
    # --- grow and pretrain
    "grow-ki-has-no-initialisation": Case(["grow", "--method", "ki", "--from", "{parent}", "--to", "bert-micro",
                                           "--out", "{new}"], "no grown initialisation to save"),
    "grow-mslt-growing-during-training": Case(["grow", "--method", "mslt", "--method-arg", "mslt.chunk_layers=1",
                                               "--from", "{parent}", "--to", "bert-micro", "--out", "{new}"],
                                              "it grows LARGE during training"),
    "grow-scratch-needs-no-parent": Case(["grow", "--method", "scratch", "--from", "{parent}", "--to", "bert-micro",
                                          "--out", "{new}"], "nothing to grow"),
    "grow-method-arg-for-another-method": Case(["grow", "--method", "ligo", "--method-arg", "mslt.alpha=0.7",
                                                "--from", "{parent}", "--to", "bert-micro", "--out", "{new}"],
                                               "method 'mslt' is not the --method (ligo)"),
    "grow-missing-absolute-parent": Case(["grow", "--method", "ligo", "--from", "/nonexistent/parent", "--to",
                                          "bert-micro", "--out", "{new}"],
                                         "parent checkpoint /nonexistent/parent does not exist"),
    "grow-unknown-size": Case(["grow", "--method", "ligo", "--from", "{parent}", "--to", "bert-enormous", "--out",
                               "{new}"], "unknown size"),
    "grow-other-family": Case(["grow", "--method", "ligo", "--from", "{parent}", "--to", "gpt2-micro", "--out",
                               "{new}"], "parent"),
    "grow-negative-seed": Case(["grow", "--method", "ligo", "--from", "{parent}", "--to", "bert-micro", "--out",
                                "{new}", "--seed", "-1"], "--seed: must be a whole number >= 0"),
    "grow-out-is-a-file": Case(["grow", "--method", "ligo", "--from", "{parent}", "--to", "bert-micro", "--out",
                                "{file}"], "is a file, not a folder"),
    "pretrain-unknown-size": Case(["pretrain", "--size", "bert-enormous"], "unknown size"),
    "pretrain-steps-zero": Case(["pretrain", "--size", "bert-nano", "--steps", "0"], "--steps: must be a positive"),
    "pretrain-out-is-a-file": Case(["pretrain", "--size", "bert-nano", "--out", "{file}"], "is a file, not a folder"),
}

MICRO_BATCH_COMMANDS = {
    "compare": (COMPARE, True),
    "pretrain": (["pretrain", "--size", "bert-nano", "--out", "{new}"], False),
    "grow": (["grow", "--method", "ligo", "--from", "{parent}", "--to", "bert-micro", "--out", "{new}"], False),
    "sweep": (["sweep", "--out", "{new}"], False),
}
CASES |= {f"{command}-micro-batch-{name}": Case([*argv, "--micro-batch", rows], message, run_dir)
          for command, (argv, run_dir) in MICRO_BATCH_COMMANDS.items()
          for name, rows, message in (("zero", "0", "--micro-batch: must be a positive whole number"),
                                      ("not-a-divisor", "3", "--micro-batch 3 does not divide the batch (16 rows)"),
                                      ("above-the-batch", "9999", "--micro-batch 9999 is larger than the batch"))}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_exit_2_one_line_no_traceback_and_nothing_changed(name, env, capsys, monkeypatch, tmp_path):
    case = CASES[name]
    if case.skip:
        pytest.skip(case.skip)
    argv = env.fill(case.argv)
    if case.config is not None:
        config = tmp_path / f"{name}.toml"
        config.write_text(case.config)
        argv += ["--config", str(config)]
    before = snapshot(env.run)
    if case.patch == "readonly":
        _raise_at_mkstemp(monkeypatch, errno.EROFS)
    elif case.patch == "denied":
        _raise_at_mkstemp(monkeypatch, errno.EACCES)
    elif case.patch == "no-write-access":
        _no_write_access(monkeypatch)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1 and case.message in lines[0], lines
    assert lines[0].startswith("bench: error: ") and "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "cache" / "parents").exists()  # nothing was trained, not even a parent
    if case.run_dir:
        assert snapshot(env.run) == before


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 40


# --- real permissions (chmod does not stop root, so these run only as another user)


@contextmanager
def read_only(folder: Path):
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        yield
    finally:
        folder.chmod(mode)


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders; simulated above instead")
@pytest.mark.parametrize("command", ["report", "baseline", "compare"])
def test_a_real_read_only_folder_is_exit_2(command, env, tmp_path, capsys):
    run = make_run_dir(tmp_path / "ro-run")
    target = tmp_path / "ro"
    target.mkdir()
    argv = {"report": ["report", str(run)], "baseline": ["baseline", str(env.run), "--out", str(target / "b.json")],
            "compare": ["compare", "--methods", "scratch", "--out", str(target / "run")]}[command]
    before = snapshot(run)
    with read_only(run if command == "report" else target):
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert snapshot(run) == before


# --- environment faults: exit 3, the error and the command that continues


def _two_lines(err: str) -> tuple[str, str]:
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, lines
    return lines[0], lines[1]


def test_a_full_disk_while_preparing_data_is_exit_3_with_the_resume_command(env, tmp_path, monkeypatch, capsys):
    from bench.runner import comparison as compare_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "cache" / "tokens" / "train.npy"))

    monkeypatch.setattr(compare_module, "prepare_data", full)
    out = tmp_path / "run"
    assert main(["compare", "--methods", "scratch", "--out", str(out), "--fresh", "--no-progress"]) == 3
    error, resume = _two_lines(capsys.readouterr().err)
    assert error.startswith("bench: error: no space left on the device") and "train.npy" in error
    assert resume.startswith("continue with: bench compare") and resume.endswith("--resume")
    assert "--fresh" not in resume and f"--out {out}" in resume


def test_a_full_disk_at_the_first_write_of_the_run_directory_is_exit_3(env, tmp_path, monkeypatch, capsys):
    import bench.records

    @contextmanager
    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        yield  # pragma: no cover

    monkeypatch.setattr(bench.records, "atomic_path", full)
    assert main(["compare", "--methods", "scratch", "--corpus", str(env.corpus), "--budget-steps", "2",
                 "--seeds", "1", "--no-progress"]) == 3
    error, resume = _two_lines(capsys.readouterr().err)
    assert "no space left" in error and "manifest.json" in error
    assert "--out reports/" in resume and resume.endswith("--resume")  # the default --out, pinned for tomorrow


def test_a_full_disk_reported_in_words_by_a_library_is_exit_3(env, tmp_path, monkeypatch, capsys):
    import bench.check

    def full(*args, **kwargs):  # what safetensors says: no OSError, just words
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                           "message: \"No space left on device\" })")

    monkeypatch.setattr(bench.check, "write_baseline", full)
    assert main(["baseline", str(env.run), "--out", str(tmp_path / "b.json")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0]  # no --resume for a command that is not a comparison


# --- the other exit codes


@pytest.fixture
def stub_compare(env, tmp_path, monkeypatch):
    """runner.compare replaced by `behaviour` (an exception to raise), for the command line's side alone."""
    from bench import runner

    def stub(behaviour):
        def compare(config, echo=print):
            raise behaviour
        monkeypatch.setattr(runner, "compare", compare)
        return ["compare", "--methods", "scratch", "--out", str(tmp_path / "run"), "--no-progress"]
    return stub


def test_runs_that_failed_after_the_others_finished_are_exit_1_with_the_retry_command(stub_compare, capsys):
    argv = stub_compare(RunsFailed("some runs failed:\nscratch-s1: RuntimeError: boom"))
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "bench: error: some runs failed:" and lines[1] == "scratch-s1: RuntimeError: boom"
    assert lines[2].startswith("continue with: bench compare") and lines[2].endswith("--resume")


def test_an_interrupt_is_exit_130_with_the_resume_command(stub_compare, capsys):
    assert main(stub_compare(KeyboardInterrupt())) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("interrupted") and lines[1].strip().endswith("--resume")


def test_a_bug_is_exit_4_in_one_line_and_debug_shows_the_traceback(stub_compare, capsys):
    argv = stub_compare(ZeroDivisionError("division by zero"))
    assert main(argv) == 4
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error (ZeroDivisionError" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *argv])
    with pytest.raises(ZeroDivisionError):
        main([*argv, "--debug"])


def test_debug_re_raises_bad_input_too(env):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="--seeds"):
        main(["--debug", "compare", "--seeds", "0"])


def test_settings_are_checked_before_the_parent_or_scratch_train(env, tmp_path, monkeypatch, capsys):
    """The issue's case: mslt.growth_share=2 used to fail only after the parent and scratch trained, and the fixed
    command then could not resume (its manifest held the bad value). Now nothing is written at all."""
    from bench.runner import comparison as compare

    monkeypatch.setattr(compare, "_set_up", lambda *a, **k: pytest.fail("data, budget or parent were prepared"))
    out = tmp_path / "run"
    assert main(["compare", "--methods", "scratch,mslt", "--method-arg", "mslt.growth_share=2", "--out",
                 str(out)]) == 2
    assert "mslt.growth_share" in capsys.readouterr().err and not out.exists()


def test_load_parent_tells_a_missing_path_from_a_hub_id(tmp_path, monkeypatch):
    from bench.errors import BenchError
    from bench.runner.parent import checkpoint_location

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    for missing in ("/nonexistent/parent", "./parent", "reports/parent", "~/nonexistent-parent", "a/b/c"):
        with pytest.raises(BenchError, match="does not exist"):
            checkpoint_location(missing)
    assert checkpoint_location(str(tmp_path)) is True
    assert checkpoint_location("google/bert_uncased_L-2_H-128_A-2") is False
    assert checkpoint_location("bert-base-uncased") is False


def test_every_registered_methods_default_settings_pass_their_checks():
    from bench.methods import make_method, method_names
    from bench.sizes import parse_pair

    for pair in ("bert-nano:bert-micro", "bert-small:bert-base", "gpt2-nano:gpt2-micro"):
        for name in method_names():
            make_method(name, None, parse_pair(pair))


def test_a_bool_setting_refuses_words_it_does_not_know():
    from dataclasses import dataclass

    from bench.errors import BenchError
    from bench.methods import _setting_value

    @dataclass
    class Settings:
        flag: bool = False

    assert _setting_value("m", "flag", "yes", False) is True and _setting_value("m", "flag", "off", True) is False
    with pytest.raises(BenchError, match="not a valid bool"):
        _setting_value("m", "flag", "banana", False)


def test_status_json_of_the_synthetic_run_directory_says_done(env):
    """The run directory the matrix guards is a finished one (else "unchanged" would prove little)."""
    states = {json.loads(path.read_text())["state"] for path in env.run.glob("runs/*/status.json")}
    assert states == {"done"}
