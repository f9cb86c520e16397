"""torchrun on CPU (gloo): one process and two give the same runs; the ranks agree on divergence; a killed
torchrun resumes (issue 11). Each test starts real torchrun processes of `bench compare`."""

from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_corpus
from safetensors.torch import load_file

from bench.checkpoint import TEST_KILL
from bench.distributed import TEST_NAN, TEST_NO_WRITES

pytestmark = pytest.mark.slow

QUICK_BENCH = Path(__file__).parent / "quick_bench.py"  # `bench`, with a one-round calibration
METHODS = ["scratch", "mslt", "bert2bert", "ki", "ligo"]
COMMON = ["--budget-steps", "20", "--parent-steps", "10", "--eval-points", "4", "--seeds", "1", "--no-progress"]


def compare(processes: int | None, out: Path, cache: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`bench compare` as one plain process (`processes` None) or under `torchrun --nproc-per-node processes`, with
    its own TMPDIR."""
    launcher = [] if processes is None else ["-m", "torch.distributed.run", "--standalone",
                                             f"--nproc-per-node={processes}"]
    command = [sys.executable, *launcher, str(QUICK_BENCH), "compare", "--out", str(out),
               "--corpus", str(cache.parent / "corpus"), *args]
    temporary = out.parent / "tmp"  # libraries' own temporary files (torch's compile cache) go here
    temporary.mkdir(exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "GROWBENCH_CACHE": str(cache), TEST_NO_WRITES: "1",
                   "TMPDIR": str(temporary), "TORCHINDUCTOR_CACHE_DIR": str(temporary / "inductor"), **env}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=out.parent,
                          check=False)


def rank_1_writes(stderr: str, out: Path) -> list[str]:
    """What rank 1 wrote, but for libraries' temporary files (in TMPDIR)."""
    line = next(line for line in stderr.splitlines() if line.startswith("growbench-test-writes rank 1: "))
    writes = ast.literal_eval(line.split(": ", 1)[1])
    return [write for write in writes if not write.split(" ", 1)[1].startswith(str(out.parent / "tmp"))]


def rows(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module (the tokenizer is trained once), beside the small corpus every run reads."""
    root = tmp_path_factory.mktemp("shared")
    write_corpus(root / "corpus")
    return root / "cache"


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, cache) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("ddp")
    arguments = ["--methods", ",".join(METHODS), *COMMON]
    one = compare(None, root / "one", cache, *arguments)
    assert one.returncode == 0, one.stderr[-3000:]
    two = compare(2, root / "two", cache, *arguments)
    assert two.returncode == 0, two.stderr[-3000:]
    return root / "one", root / "two", two.stderr


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_take_the_steps_one_takes(one_and_two, method):
    one, two, _ = one_and_two
    for a, b in zip(rows(one / "runs" / f"{method}-s0" / "phases.csv"),
                    rows(two / "runs" / f"{method}-s0" / "phases.csv"), strict=True):
        for column in ("phase", "steps", "tokens", "flops_executed"):
            assert a[column] == b[column], (method, column)
    for a, b in zip(rows(one / "runs" / f"{method}-s0" / "curve.csv"),
                    rows(two / "runs" / f"{method}-s0" / "curve.csv"), strict=True):
        assert (a["step"], a["tokens"], a["flops"]) == (b["step"], b["tokens"], b["flops"])
        for column in ("train_loss", "val_loss"):
            if a[column] not in ("", "nan"):
                assert float(b[column]) == pytest.approx(float(a[column]), rel=1e-4), (method, column, a["step"])


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_end_with_the_weights_one_ends_with(one_and_two, method):
    one, two, _ = one_and_two
    first = load_file(one / "runs" / f"{method}-s0" / "model" / "model.safetensors")
    second = load_file(two / "runs" / f"{method}-s0" / "model" / "model.safetensors")
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=1e-4, atol=1e-5, msg=f"{method} {name}")


def test_two_processes_bill_two_devices_and_rank_1_writes_nothing(one_and_two):
    one, two, stderr = one_and_two
    for method in METHODS:
        for row in rows(two / "runs" / f"{method}-s0" / "phases.csv"):
            assert int(row["devices"]) == 2  # one thread per process (OMP_NUM_THREADS=1): two core-hours an hour
            assert float(row["device_hours"]) == pytest.approx(float(row["train_s"]) * 2 / 3600)
            assert "summed over 2 ranks" not in row["energy_cpu_method"]  # one node: its CPU counted once
        for row in rows(one / "runs" / f"{method}-s0" / "phases.csv"):
            assert int(row["devices"]) == 1
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["train"]["world_size"] == 2 and len(manifest["hardware"]["rank_devices"]) == 2
    assert json.loads((one / "manifest.json").read_text())["train"]["world_size"] == 1
    assert rank_1_writes(stderr, two) == []  # every file Python opened for writing, made, moved or deleted
    listing = sorted(path.relative_to(two).as_posix() for path in two.rglob("*"))
    assert listing == sorted(path.relative_to(one).as_posix() for path in one.rglob("*"))


def test_a_nan_on_rank_1_stops_both_ranks_at_the_same_step(tmp_path, cache):
    out = tmp_path / "nan"
    result = compare(2, out, cache, "--methods", "scratch", *COMMON, **{TEST_NAN: "1:7"})
    assert result.returncode == 0, result.stderr[-3000:]  # rank 0 was not left waiting for rank 1: both stopped
    status = json.loads((out / "runs" / "scratch-s0" / "status.json").read_text())
    assert status["state"] == "diverged" and "loss became nan at step 7" in status["reason"]
    assert rank_1_writes(result.stderr, out) == []


def test_a_killed_torchrun_resumes_to_the_result_of_an_uninterrupted_one(one_and_two, tmp_path, cache):
    whole = one_and_two[1] / "runs" / "scratch-s0"  # the same run, uninterrupted (its comparison had more methods)
    out = tmp_path / "killed"
    arguments = ["--methods", "scratch", *COMMON]
    killed = compare(2, out, cache, *arguments, **{TEST_KILL: "train:12"})
    assert killed.returncode != 0  # rank 0 killed itself at step 12; torchrun stopped rank 1
    assert (out / "runs" / "scratch-s0" / "checkpoint" / "LATEST").exists()  # the eval point at step 10
    resumed = compare(2, out, cache, *arguments, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing from its checkpoint" in resumed.stderr
    for a, b in zip(rows(whole / "curve.csv"), rows(out / "runs" / "scratch-s0" / "curve.csv"), strict=True):
        assert (a["step"], a["train_loss"], a["val_loss"]) == (b["step"], b["train_loss"], b["val_loss"])
    first = load_file(whole / "model" / "model.safetensors")
    second = load_file(out / "runs" / "scratch-s0" / "model" / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_resuming_with_another_number_of_processes_is_refused(one_and_two, cache):
    two = one_and_two[1]
    def files() -> dict:  # but the lock, which names its last holder
        return {path: path.read_bytes() for path in two.rglob("*") if path.is_file() and path.name != ".compare.lock"}

    before = files()
    result = compare(None, two, cache, "--methods", ",".join(METHODS), *COMMON, "--resume")
    assert result.returncode == 2 and "train.world_size 2 -> 1" in result.stderr
    assert files() == before


def test_a_batch_that_does_not_split_over_the_processes_is_refused_on_rank_0(tmp_path, cache):
    result = compare(3, tmp_path / "three", cache, "--methods", "scratch", *COMMON)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("bench: error:")]
    assert errors[0] == ("bench: error: the batch (16 rows) does not split evenly over 3 processes; run a number of "
                         "processes that divides 16")
    assert all("another torchrun process left the run" in line for line in errors[1:])  # not "a bug in growbench"
    assert not (tmp_path / "three" / "manifest.json").exists()
