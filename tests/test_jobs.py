"""Nothing lost, nothing mixed: strict resume, integrity checksums and --repair, --fresh, locks, file modes,
and a comparison fanned out as independent jobs (--prepare, --only) that trains every run exactly once."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from bench import runner
from bench.errors import BenchError
from bench.locks import RUN_LOCK, Lock
from bench.records import RunDir, read_json, write_json
from bench.report import analyse

PAIR = "bert-nano:bert-micro"
LOSSES = ["step", "tokens", "flops", "phase", "train_loss", "val_loss"]


@pytest.fixture(scope="module")
def corpus(small_corpus):
    return small_corpus


def _config(corpus: Path, out: Path, **overrides) -> runner.CompareConfig:
    defaults = runner.parse_pair(PAIR).defaults
    data = runner.DataConfig([str(corpus)], None, defaults.seq_len, defaults.batch_size, defaults.vocab_size)
    settings = {"methods": ["scratch", "stackbert"], "seeds": 1, "budget_steps": 8, "parent_steps": 8,
                "eval_points": 4, **overrides}
    return runner.CompareConfig(pair=PAIR, data=data, out=out, progress_bar=False, **settings)


def _quiet(line: str) -> None:
    pass


def _digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and not path.name.endswith(".lock")}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    """A finished two-method comparison, never modified (tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    runner.compare(_config(corpus, out), echo=_quiet)
    return out


def _copy(finished: Path, to: Path) -> Path:
    subprocess.run(["cp", "-a", str(finished), str(to)], check=True)
    return to


# --------------------------------------------------------------------------- strict resume


@pytest.mark.parametrize("change, named", [
    ({"lr": 2e-3}, "train.optim.lr 0.001 -> 0.002"),
    ({"parent_steps": 9}, "parent.steps 8 -> 9"),
    ({"budget_steps": 9}, "budget.value"),
    ({"eval_points": 5}, "train.eval_points 4 -> 5"),
    ({"methods": ["scratch", "mslt"]}, "methods.mslt"),
    ({"method_args": {"stackbert": {"alpha": "0.7"}}}, "methods.stackbert.alpha 0.6 -> 0.7"),
    ({"prices": {"H100": 9.0}}, "prices.devices.H100.usd_per_hour 2.99 -> 9.0"),
    ({"country": "FRA"}, "country"),
])
def test_resume_with_any_other_setting_refuses_naming_it_and_changes_nothing(corpus, finished, tmp_path, change,
                                                                              named):
    out = _copy(finished, tmp_path / "run")
    before = _digest(out)
    with pytest.raises(BenchError, match=named.replace(".", r"\.")) as error:
        runner.compare(_config(corpus, out, resume=True, **change), echo=_quiet)
    assert "--fresh" in str(error.value) and "\n" not in str(error.value)
    assert _digest(out) == before


def test_resume_with_the_same_settings_skips_finished_runs_and_records_the_session(corpus, finished, tmp_path):
    out = _copy(finished, tmp_path / "run")
    lines = []
    runner.compare(_config(corpus, out, resume=True), echo=lines.append)
    assert "scratch-s0: done already, skipped" in lines and "stackbert-s0: done already, skipped" in lines
    assert _digest(out / "runs") == _digest(finished / "runs")
    manifest = read_json(out / "manifest.json")
    assert len(manifest["sessions"]) == 1
    assert manifest["data"]["corpus"] and manifest["data"]["tokens"]  # the fingerprints of what was used, not null


def test_fresh_starts_a_comparison_over_and_refuses_a_folder_that_is_not_one(corpus, finished, tmp_path):
    out = _copy(finished, tmp_path / "run")
    (out / "runs" / "scratch-s0" / "curve.csv").write_text("step\n")  # damaged: --fresh does not care
    runner.compare(_config(corpus, out, fresh=True, lr=2e-3), echo=_quiet)
    assert read_json(out / "manifest.json")["train"]["optim"]["lr"] == 2e-3
    analyse(out)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BenchError, match="does not hold a comparison"):
        runner.compare(_config(corpus, other, fresh=True), echo=_quiet)
    assert (other / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- integrity


@pytest.mark.parametrize("damage", ["truncate curve", "truncate model", "delete phases", "edit status-less"])
def test_a_damaged_finished_run_is_named_and_repair_trains_it_again_identically(corpus, finished, tmp_path, damage):
    out = _copy(finished, tmp_path / "run")
    folder = out / "runs" / "stackbert-s0"
    target = {"truncate curve": "curve.csv", "truncate model": "model/model.safetensors",
              "delete phases": "phases.csv", "edit status-less": "fvcore_train.csv"}[damage]
    if damage.startswith("truncate"):
        data = (folder / target).read_bytes()
        (folder / target).write_bytes(data[: len(data) * 2 // 3])
    elif damage == "delete phases":
        (folder / target).unlink()
    else:
        (folder / target).write_text((folder / target).read_text().replace("1", "2", 1))
    for reader in (lambda: analyse(out), lambda: runner.compare(_config(corpus, out, resume=True), echo=_quiet)):
        with pytest.raises(BenchError, match=f"{target}.*damaged.*--repair"):
            reader()
    lines = []
    runner.compare(_config(corpus, out, resume=True, repair=True), echo=lines.append)
    assert any(line.startswith("stackbert-s0: ") and "--repair" in line for line in lines)
    assert "scratch-s0: done already, skipped" in lines
    assert not RunDir(folder).damaged()
    repaired, original = _weights(folder), _weights(finished / "runs" / "stackbert-s0")
    assert all(torch.equal(repaired[name], original[name]) for name in original)
    pd.testing.assert_frame_equal(pd.read_csv(folder / "curve.csv")[LOSSES],
                                  pd.read_csv(finished / "runs" / "stackbert-s0" / "curve.csv")[LOSSES])


def test_resume_removes_what_interrupted_writes_left(corpus, finished, tmp_path):
    out = _copy(finished, tmp_path / "run")
    stray = [out / ".manifest.json.k2j4h1", out / "runs" / "scratch-s0" / ".curve.csv.x8f0a2",
             out / "runs" / "scratch-s0" / ".model.ab12cd" / "model.safetensors"]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    runner.compare(_config(corpus, out, resume=True), echo=_quiet)
    assert not any(path.exists() for path in stray) and not (out / "runs" / "scratch-s0" / ".model.ab12cd").exists()
    assert not RunDir(out / "runs" / "scratch-s0").damaged()


def test_records_get_the_modes_the_umask_gives(finished):
    run = finished / "runs" / "scratch-s0"
    umask = os.umask(0)
    os.umask(umask)
    for path, base in ((run / "curve.csv", 0o666), (run / "status.json", 0o666), (run / "model", 0o777),
                       (finished / "manifest.json", 0o666)):
        assert stat.S_IMODE(path.stat().st_mode) == base & ~umask, path


# --------------------------------------------------------------------------- locks


_HOLD = "import sys, time; from bench.locks import Lock; Lock(sys.argv[1]).acquire(); print('held', flush=True); " \
        "time.sleep(60)"


def test_a_lock_names_its_holder_and_is_free_once_the_holder_is_killed(tmp_path):
    path = tmp_path / "run" / RUN_LOCK
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = Lock(path)
        assert not lock.try_acquire() and lock.held()
        assert f"pid {holder.pid}" in lock.holder()
        with pytest.raises(BenchError, match=f"locked by pid {holder.pid}"):
            lock.acquire(timeout=0.3)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert lock.try_acquire()  # the kernel dropped the dead holder's lock: never stale
        lock.release()
    finally:
        holder.kill()


def test_a_run_locked_by_another_process_is_skipped_not_trained_twice(corpus, finished, tmp_path):
    out = _copy(finished, tmp_path / "run")
    for path in (out / "runs" / "stackbert-s0").iterdir():  # as if stackbert-s0 were being trained right now
        if path.name != RUN_LOCK:
            subprocess.run(["rm", "-rf", str(path)], check=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out / "runs" / "stackbert-s0" / RUN_LOCK)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lines = []
        runner.compare(_config(corpus, out, resume=True), echo=lines.append)
        assert any(line.startswith("stackbert-s0: being trained by pid") for line in lines), lines
        assert not (out / "runs" / "stackbert-s0" / "status.json").exists()
    finally:
        holder.kill()


# --------------------------------------------------------------------------- independent jobs


def _bench(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


@pytest.mark.slow
def test_three_concurrent_jobs_train_each_run_once_and_report_like_one_process(corpus, tmp_path):
    """--prepare once, then three `--only` jobs with overlapping selections at the same time; afterwards the
    report equals a single-process comparison (losses, FLOPs, FLOPs savings), and each run was trained once."""
    env = {**os.environ, "GROWBENCH_CACHE": os.environ["GROWBENCH_CACHE"], "OMP_NUM_THREADS": "1"}
    common = ["compare", "--pair", PAIR, "--methods", "scratch,stackbert", "--seeds", "2", "--budget-steps", "8",
              "--parent-steps", "8", "--corpus", str(corpus), "--no-progress"]
    single, fanned = tmp_path / "single", tmp_path / "fanned"
    first = _bench(*common, "--out", str(single), env=env)
    assert first.wait(timeout=300) == 0, first.stdout.read()
    prepare = _bench(*common, "--out", str(fanned), "--prepare", env=env)
    assert prepare.wait(timeout=300) == 0, prepare.stdout.read()
    assert not (fanned / "runs").exists() and (fanned / "manifest.json").exists()
    selections = ["scratch-s0,stackbert-s0,scratch-s1", "stackbert-s0,scratch-s1,stackbert-s1",
                  "stackbert-s1,scratch-s0"]
    jobs = [_bench(*common, "--out", str(fanned), "--only", selection, env=env) for selection in selections]
    outputs = []
    for job in jobs:
        outputs.append(job.communicate(timeout=300)[0])
        assert job.returncode == 0, outputs[-1]
    trained = [line.split(":")[0] for output in outputs for line in output.splitlines() if ": val loss " in line]
    assert sorted(trained) == ["scratch-s0", "scratch-s1", "stackbert-s0", "stackbert-s1"], outputs
    for run in trained:
        pd.testing.assert_frame_equal(pd.read_csv(fanned / "runs" / run / "curve.csv")[LOSSES],
                                      pd.read_csv(single / "runs" / run / "curve.csv")[LOSSES])
        ours, theirs = _weights(fanned / "runs" / run), _weights(single / "runs" / run)
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
    report = subprocess.run([sys.executable, "-m", "bench", "report", str(fanned)], capture_output=True, check=False,
                            env=env)
    assert report.returncode == 0, report.stderr
    columns = ["method", "n_done", "n_reached", "savings_flops", "final_val_loss"]
    pd.testing.assert_frame_equal(analyse(fanned).table[columns], analyse(single).table[columns])


def test_report_lists_the_runs_not_started_yet(corpus, finished, tmp_path):
    out = _copy(finished, tmp_path / "run")
    manifest = read_json(out / "manifest.json")
    manifest["seeds"] = [0, 1]
    write_json(out / "manifest.json", manifest)
    data = analyse(out).data
    states = {record.folder: record.state for record in data.runs}
    assert states["scratch-s1"] == "not started" and states["stackbert-s1"] == "not started"
    assert states["scratch-s0"] == "done"


def test_only_names_runs_of_this_comparison(corpus, tmp_path):
    with pytest.raises(BenchError, match="ligo-s0: not a run of this comparison"):
        runner.compare(_config(corpus, tmp_path / "run", only=["ligo-s0"]), echo=_quiet)
    with pytest.raises(BenchError, match="scratch-s3"):
        runner.compare(_config(corpus, tmp_path / "run", only=["scratch-s3"]), echo=_quiet)
    assert not (tmp_path / "run").exists()


def test_interrupted_setup_waits_for_nobody(corpus, finished, tmp_path):
    """A setup killed with kill -9 leaves its lock file behind; the next job takes the lock at once."""
    out = _copy(finished, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out / ".compare.lock")], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    runner.compare(_config(corpus, out, resume=True), echo=_quiet)
    assert time.monotonic() - started < 60


def test_a_budget_too_large_to_plan_is_refused_before_anything_is_written(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(BenchError, match="more than growbench plans"):
        runner.compare(_config(corpus, out, budget_steps=10**12), echo=_quiet)
    assert [path.name for path in out.iterdir()] == [".compare.lock"]
    runner.compare(_config(corpus, out, methods=["scratch"]), echo=_quiet)  # the same --out, no --resume needed
    assert RunDir(out / "runs" / "scratch-s0").is_done()
