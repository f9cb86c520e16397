"""SIGTERM, SIGHUP and SIGUSR1 (what a cluster sends before it ends a job) stop a real `bench` process gracefully:
it finishes the step it is on, writes a checkpoint there and the partial curve, prints the command that continues
and exits 128 + the signal's number; `--resume` then ends as the uninterrupted command did, training no step twice.

The signals are real: the test hook GROWBENCH_TEST_KILL (bench/stopping.py) makes the process send one to itself
at a given training step (or while a checkpoint is written), through the fork server of test_resume_kill.py. One run
directory takes the stops in turn (`bench compare --methods scratch`, 12 steps, eval points at 4, 8 and 12, so a
checkpoint at any other step is the stop's own), each `--resume` session continuing where the last one stopped:

  TERM at step 2 (143)   HUP at step 5 (129)   USR1 at step 7, and a second USR1 while its checkpoint is written:
  stopped at once (138), the checkpoint at step 5 left as it was   then a last --resume to the end.

A parent's pretraining (`bench pretrain`, what a comparison runs first) is stopped by TERM the same way.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_corpus
from safetensors.torch import load_file
from test_resume_kill import ForkServer, newest_checkpoint

from bench import calibration
from bench.cli import main
from bench.errors import Stopped
from bench.stopping import TEST_KILL, handlers

ARGUMENTS = ["--methods", "scratch", "--budget-steps", "12", "--eval-points", "3", "--seeds", "1", "--no-progress"]
STOPS = [  # (GROWBENCH_TEST_KILL, exit status, step of the newest checkpoint it leaves, step the stop wrote at)
    ("train:2:TERM", 128 + signal.SIGTERM, 2),
    ("train:5:HUP", 128 + signal.SIGHUP, 5),
    ("train:7:USR1,train:7:USR1:save", 128 + signal.SIGUSR1, 5),  # the second signal: at once, mid-write
]
PRETRAIN = ["pretrain", "--size", "bert-nano", "--steps", "6", "--no-progress"]
SESSION_NUMBERS = itertools.count()
CURVE = ["step", "tokens", "flops", "phase", "train_loss", "val_loss"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    write_corpus(root / "corpus")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROWBENCH_CACHE", str(root / "cache"))
        yield root


@pytest.fixture(scope="module")
def sessions(workspace):
    env = {key: value for key, value in os.environ.items() if key != TEST_KILL}
    server = ForkServer(env | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                               "PYTHONPATH": str(Path(__file__).parents[1])})
    yield server
    server.close()


def session(sessions: ForkServer, workspace: Path, argv: list[str], stop: str | None = None):
    folder = workspace / "sessions" / str(next(SESSION_NUMBERS))  # its stdout and stderr
    folder.mkdir(parents=True)
    return sessions.run(argv, {TEST_KILL: stop} if stop else {}, folder)


@pytest.fixture(scope="module")
def reference(workspace):
    """The uninterrupted comparison, in this process (one torch thread, as the sessions)."""
    assert torch.get_num_threads() == 1
    out = workspace / "uninterrupted"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, "ROUNDS", 1)
        patch.setattr(calibration, "REPEATS", 1)
        assert main(["compare", *ARGUMENTS, "--corpus", str(workspace / "corpus"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def stopped(workspace, reference, sessions):
    """The run directory after every stop and the last `--resume`; what each stop left behind."""
    out = workspace / "stopped"
    argv = ["compare", *ARGUMENTS, "--corpus", str(workspace / "corpus"), "--out", str(out)]
    run = out / "runs" / "scratch-s0"
    left = []
    for number, (stop, _, _) in enumerate(STOPS):
        result = session(sessions, workspace, [*argv, *(["--resume"] if number else [])], stop)
        left.append({"returncode": result.returncode, "stderr": result.stderr, "checkpoint": newest_checkpoint(run),
                     "status": json.loads((run / "status.json").read_text()),
                     "curve": pd.read_csv(run / "curve.csv") if (run / "curve.csv").exists() else None})
    final = session(sessions, workspace, [*argv, "--resume"])
    assert final.returncode == 0, final.stderr[-3000:]
    return out, left, final


@pytest.mark.parametrize("number", range(len(STOPS)), ids=[stop for stop, *_ in STOPS])
def test_a_stop_signal_exits_128_plus_its_number_after_a_checkpoint(stopped, number):
    _, left, _ = stopped
    stop, returncode, step = STOPS[number]
    result = left[number]
    assert result["returncode"] == returncode, result["stderr"][-3000:]
    name = signal.Signals(returncode - 128).name
    lines = result["stderr"].strip().splitlines()
    assert lines[-2].startswith(f"stopped by {name}") and lines[-2].endswith("Continue with:"), lines[-3:]
    assert lines[-1].strip().startswith("bench compare") and "--resume" in lines[-1]
    assert result["checkpoint"]["local_step"] == step and result["checkpoint"]["writing"] == []
    assert result["status"]["state"] == "running" and name in result["status"]["reason"]
    if "save" in stop:  # the second signal ended it while the checkpoint at step 7 was written
        assert "(a second signal: at once)" in lines[-2]
    else:
        assert f"after step {step} of scratch s0" in lines[-2]
        assert result["curve"] is not None and result["curve"]["step"].max() <= step  # the partial curve


def test_each_resume_continues_at_the_step_the_last_session_stopped(stopped):
    """No step trained twice: every graceful stop's checkpoint is at the very step it stopped after, and the next
    session continues there."""
    _, left, final = stopped
    continued = [*(result["stderr"] for result in left[1:]), final.stderr]
    for result, stderr in zip(left, continued, strict=True):
        step = result["checkpoint"]["local_step"]
        assert f"continuing from its checkpoint (phase train, step {step} of 12; global step {step})" in stderr


def test_a_stopped_run_resumes_to_the_uninterrupted_result(stopped, reference):
    out, _, _ = stopped
    run, whole = out / "runs" / "scratch-s0", reference / "runs" / "scratch-s0"
    pd.testing.assert_frame_equal(pd.read_csv(run / "curve.csv")[CURVE], pd.read_csv(whole / "curve.csv")[CURVE],
                                  check_exact=True)
    columns = ["phase", "steps", "tokens", "flops_executed"]
    pd.testing.assert_frame_equal(pd.read_csv(run / "phases.csv")[columns], pd.read_csv(whole / "phases.csv")[columns],
                                  check_exact=True)
    weights = [load_file(folder / "model" / "model.safetensors") for folder in (run, whole)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert json.loads((run / "status.json").read_text())["state"] == "done"


def test_a_parents_pretraining_stopped_by_sigterm_continues_from_its_checkpoint(workspace, sessions):
    corpus = ["--corpus", str(workspace / "corpus")]
    whole, out = workspace / "parent-whole", workspace / "parent-stopped"
    assert session(sessions, workspace, [*PRETRAIN, *corpus, "--out", str(whole)]).returncode == 0
    first = session(sessions, workspace, [*PRETRAIN, *corpus, "--out", str(out)], "train:3:TERM")
    assert first.returncode == 143, first.stderr[-3000:]
    lines = first.stderr.strip().splitlines()
    assert re.match(r"stopped by SIGTERM after step 3 of pretrain bert-nano\b.*Continue with:$", lines[-2]), lines[-3:]
    assert lines[-1].strip() == "bench " + " ".join([*PRETRAIN, *corpus, "--out", str(out)])
    again = session(sessions, workspace, [*PRETRAIN, *corpus, "--out", str(out)])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing from its checkpoint (phase train, step 3 of 6" in again.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "curve.csv")[CURVE], pd.read_csv(whole / "curve.csv")[CURVE],
                                  check_exact=True)
    assert not (out / "checkpoint").exists()


def test_a_signal_outside_training_stops_at_once_and_a_handler_is_restored_after_the_command():
    """Outside a run's training loop (preparing data, calibrating, writing records) there is nothing a checkpoint
    could keep: the signal stops the command there, as SIGINT does."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stop, handlers():
        os.kill(os.getpid(), signal.SIGHUP)
    assert stop.value.exit_code == 129 and stop.value.where == ""
    assert signal.getsignal(signal.SIGTERM) is before
