"""Kill a real `bench compare` in the middle of each kind of phase, then `--resume`: every run ends as the
uninterrupted comparison's did (loss columns, final weights, FLOPs), with its time columns carried over.

How the kills land: the test hook GROWBENCH_TEST_KILL=PHASE:STEP[:INT][:save] (bench/checkpoint.py) makes the
process send itself a real SIGKILL (or SIGINT) once it has trained STEP steps of the phase named PHASE, or in
the middle of the first checkpoint write at or after that step. One run directory takes the kills in turn,
each `--resume` session continuing the run the last one killed and being killed in the next:

  scratch: train   ligo: operator phase   KI: distil phase, by SIGINT while writing a checkpoint (exit 130)
  bert2BERT: stage 1 (sampled sub-models)   MSLT: growth stage, by SIGKILL while writing a checkpoint

Each session is a process of its own, running what `python -m bench` runs (`bench.cli.main`): a child forked
from one process that imported bench once (a fork server), so that the sessions do not pay torch's and
transformers' imports each time. Sessions and the uninterrupted comparison (run in this process) compute on
one thread, alike; their calibration is one short round.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from bench import calibration
from bench.checkpoint import LATEST, TEST_KILL
from bench.cli import main

SENTENCES = [
    "The parser reads the configuration file and returns a dictionary of options.",
    "Each worker process handles one request at a time and reports its status.",
    "A tokenizer splits text into pieces that the model maps to vectors.",
    "Training stops when the validation loss no longer improves for several evaluations.",
]
RUNS = ["scratch-s0", "ligo-s0", "ki-s0", "bert2bert-s0", "mslt-s0"]
ARGUMENTS = ["--methods", "scratch,ligo,ki,bert2bert,mslt", "--method-arg", "ligo.operator_steps=6",
             "--budget-steps", "20", "--parent-steps", "20", "--seeds", "1", "--no-progress"]
KILLS = [  # (GROWBENCH_TEST_KILL, exit status, run killed, phase of its newest checkpoint)
    ("train:11", -9, "scratch-s0", "train"),
    ("operator:4", -9, "ligo-s0", "operator"),
    ("distil:5:INT:save", 130, "ki-s0", "distil"),
    ("stage-1:4", -9, "bert2bert-s0", "stage-1"),
    ("growth-1:9:save", -9, "mslt-s0", "growth-1"),
]
"""The eval points (20) fall at every step or two: a checkpoint each. Phases: scratch's train (20 steps), ligo's
operator (6 steps and its end check), KI's distil (7), bert2BERT's stage 1 (6, checkpoints at 3 and 6), MSLT's growth
stage (15)."""
FORK_SERVER = r"""
import json, os, signal, sys, traceback
signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever SIGINT disposition the test process passed on
from bench import calibration
calibration.ROUNDS = calibration.REPEATS = 1
from bench.cli import main
for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.environ.update(job["env"])
        for fd, name in ((1, job["stdout"]), (2, job["stderr"])):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        try:
            code = main(job["argv"])
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""
"""Reads one job a line (argv, environment, output files), forks a child that runs it, answers its exit status
(-N: killed by signal N)."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small corpus, and one growbench cache for the module (tokenizer and parent trained once)."""
    root = tmp_path_factory.mktemp("resume-kill")
    corpus = root / "corpus"
    corpus.mkdir()
    for index in range(8):
        paragraphs = [" ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(3)) for _ in range(30)]
        (corpus / f"doc{index}.txt").write_text("\n\n".join(f"{p} ({index}.{n})" for n, p in enumerate(paragraphs)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROWBENCH_CACHE", str(root / "cache"))
        yield root


SESSION_NUMBERS = itertools.count()


@dataclass
class Session:
    returncode: int
    stdout: str
    stderr: str


class ForkServer:
    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)

    def run(self, argv: list[str], env: dict[str, str], folder: Path, timeout: float = 300) -> Session:
        stdout, stderr = folder / "stdout.txt", folder / "stderr.txt"
        job = {"argv": argv, "env": env, "stdout": str(stdout), "stderr": str(stderr)}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"bench {' '.join(argv)} did not finish in {timeout} s"
        return Session(int(self.process.stdout.readline()), stdout.read_text(), stderr.read_text())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def sessions(workspace):
    env = {key: value for key, value in os.environ.items() if key != TEST_KILL}
    server = ForkServer(env | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                               "PYTHONPATH": str(Path(__file__).parents[1])})
    yield server
    server.close()


def compare(sessions: ForkServer, workspace: Path, out: Path, *extra: str, kill: str | None = None) -> Session:
    """A `bench compare` session in a process of its own, killed as `kill` says."""
    argv = ["compare", *ARGUMENTS, "--corpus", str(workspace / "corpus"), "--out", str(out), *extra]
    folder = workspace / "sessions" / str(next(SESSION_NUMBERS))  # its stdout and stderr
    folder.mkdir(parents=True)
    return sessions.run(argv, {TEST_KILL: kill} if kill else {}, folder)


def newest_checkpoint(run: Path) -> dict | None:
    folder = run / "checkpoint"
    if not (folder / LATEST).exists():
        return None
    meta = json.loads((folder / (folder / LATEST).read_text().strip() / "meta.json").read_text())
    meta["writing"] = sorted(path.name for path in folder.iterdir() if path.name.startswith(".writing-"))
    return meta


@pytest.fixture(scope="module")
def reference(workspace):
    """The uninterrupted comparison, in this process (the tests' one torch thread: see conftest.py)."""
    assert torch.get_num_threads() == 1
    out = workspace / "uninterrupted"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, "ROUNDS", 1)
        patch.setattr(calibration, "REPEATS", 1)
        assert main(["compare", *ARGUMENTS, "--corpus", str(workspace / "corpus"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def killed(workspace, reference, sessions):
    """The run directory after every kill and the last `--resume`; what each kill left behind."""
    out = workspace / "killed"
    left = []
    for number, (kill, _, run, _) in enumerate(KILLS):
        session = compare(sessions, workspace, out, *(["--resume"] if number else []), kill=kill)
        status = json.loads((out / "runs" / run / "status.json").read_text())
        left.append({"returncode": session.returncode, "stderr": session.stdout[-2000:] + session.stderr,
                     "state": status["state"],
                     "checkpoint": newest_checkpoint(out / "runs" / run)})
    final = compare(sessions, workspace, out, "--resume")
    assert final.returncode == 0, final.stderr[-3000:]
    return out, left, final


@pytest.mark.parametrize("number", range(len(KILLS)), ids=[kill for kill, *_ in KILLS])
def test_each_kill_lands_in_the_middle_of_its_phase(killed, number):
    _, sessions, _ = killed
    kill, returncode, _, phase = KILLS[number]
    session = sessions[number]
    assert session["returncode"] == returncode, session["stderr"][-3000:]
    assert session["state"] == "running"
    saved = session["checkpoint"]
    assert saved is not None and saved["phase"] == phase
    assert 0 < saved["local_step"] < saved["phase_steps"]  # resumed mid-phase, not from a phase's start or end
    if "save" in kill:
        assert saved["local_step"] < int(kill.split(":")[1])  # the checkpoint before the one being written


def test_a_kill_while_writing_leaves_the_previous_checkpoint_readable(killed):
    _, sessions, final = killed
    (session,) = [s for (kill, *_), s in zip(KILLS, sessions) if kill.endswith(":save") and "INT" not in kill]
    assert session["checkpoint"]["writing"]  # the half-written one, never published; the next session removes it
    assert "mslt-s0: continuing from its checkpoint (phase growth-1" in final.stderr


def test_sigint_while_writing_exits_130_and_leaves_no_half_written_checkpoint(killed):
    _, sessions, _ = killed
    (session,) = [s for (kill, *_), s in zip(KILLS, sessions) if "INT" in kill]
    assert session["returncode"] == 130
    assert "interrupted" in session["stderr"] and "--resume" in session["stderr"]
    assert session["checkpoint"]["writing"] == []


@pytest.mark.parametrize("run", RUNS)
def test_a_killed_run_resumes_to_the_uninterrupted_result(killed, reference, run):
    out, _, _ = killed
    expected, resumed = (pd.read_csv(folder / "runs" / run / "curve.csv") for folder in (reference, out))
    columns = ["step", "tokens", "flops", "phase", "train_loss", "val_loss"]
    pd.testing.assert_frame_equal(resumed[columns], expected[columns], check_exact=True)
    assert resumed["train_s"].is_monotonic_increasing  # the earlier sessions' seconds carried over
    assert resumed["reference_s"].is_monotonic_increasing

    expected, resumed = (pd.read_csv(folder / "runs" / run / "phases.csv") for folder in (reference, out))
    columns = ["phase", "steps", "tokens", "flops_executed", "flops_fvcore", "flops_analytic", "parameters",
               "trainable_parameters", "plain_large"]
    pd.testing.assert_frame_equal(resumed[columns], expected[columns], check_exact=True)
    # the same settings; their order can differ (ligo's log is shared with the calibration's walk of its phases)
    assert [ast.literal_eval(text) for text in resumed["settings"]] == [ast.literal_eval(text)
                                                                        for text in expected["settings"]]

    weights = [load_file(folder / "runs" / run / "model" / "model.safetensors") for folder in (reference, out)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])

    assert json.loads((out / "runs" / run / "status.json").read_text())["state"] == "done"
    assert not (out / "runs" / run / "checkpoint").exists()  # removed once the run is recorded


def test_a_huge_budget_is_refused_before_anything_is_written(workspace, capsys):
    """`--budget-steps 1e12` used to plan one list entry per step (memory grew ~180 MB/s): now one line, exit 2,
    before the manifest is written, within seconds and a normal process's memory. (The loop's own bound on a
    phase's plan, for budgets a method's cheaper steps make too long, is tested in test_checkpoint.py.)"""
    out = workspace / "huge"
    for methods in ("scratch", "bert2bert"):
        started = time.perf_counter()
        assert main(["compare", "--methods", methods, "--budget-steps", "1000000000000", "--parent-steps", "20",
                     "--no-progress", "--corpus", str(workspace / "corpus"), "--out", str(out / methods)]) == 2
        assert time.perf_counter() - started < 60
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and "1e+12 steps" in error[0] and "more than growbench plans (1e+08)" in error[0]
        assert not (out / methods / "manifest.json").exists()
