"""One calibration table per comparison (bench/calibration.py): signatures, the table on disk, the same reference
step for the same signature in every run, --resume and kill -9, and contention flagged under a CPU burner."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import calibration, runner
from bench.calibration import CALIBRATION_FILE, CalibrationTable, Timing, phase_signature
from bench.cli import main
from bench.errors import BenchError
from bench.phases import Phase
from bench.report import analyse, format_markdown
from bench.report.contention import UNRELIABLE, judged_phases
from bench.runner import one_run
from bench.sizes import get_size

SENTENCES = [
    "The parser reads the configuration file and returns a dictionary of options.",
    "Each worker process handles one request at a time and reports its status.",
    "A tokenizer splits text into pieces that the model maps to vectors.",
    "Training stops when the validation loss no longer improves for several evaluations.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small corpus, and one growbench cache for the module (the tokenizer and parent are trained once)."""
    root = tmp_path_factory.mktemp("calibration")
    folder = root / "corpus"
    folder.mkdir()
    for index in range(8):
        paragraphs = [" ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(3)) for _ in range(30)]
        (folder / f"doc{index}.txt").write_text("\n\n".join(f"{p} ({index}.{n})" for n, p in enumerate(paragraphs)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROWBENCH_CACHE", str(root / "cache"))
        yield folder


def _config(corpus: Path, out: Path, methods: list[str], seeds: int, budget_steps: int = 20,
            **overrides) -> runner.CompareConfig:
    defaults = runner.parse_pair("bert-nano:bert-micro").defaults
    data = runner.DataConfig([str(corpus)], None, defaults.seq_len, defaults.batch_size, defaults.vocab_size)
    return runner.CompareConfig(pair="bert-nano:bert-micro", methods=methods, budget_steps=budget_steps,
                                parent_steps=20, seeds=seeds, data=data, out=out, eval_points=4, progress_bar=False,
                                **overrides)


def _phases(run_dir: Path) -> pd.DataFrame:
    frames = [pd.read_csv(path, float_precision="round_trip").assign(run=path.parent.name)
              for path in sorted(run_dir.glob("runs/*/phases.csv"))]
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- signature and table


def _batch(rows: int = 4, seq: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 100, (rows, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids.clone()}


def test_a_signature_is_what_decides_a_steps_cost():
    size = get_size("bert-nano")
    first, second = (Phase("train", size.build(128, 16, seed)) for seed in (0, 1))
    batch = _batch()
    assert phase_signature(first, batch) == phase_signature(second, batch)  # other weights, same computation
    assert phase_signature(first, batch) != phase_signature(first, _batch(rows=2))
    top = [p for name, p in second.model.named_parameters() if "layer.1." in name]
    assert phase_signature(Phase("top", second.model, trainable=top), batch) != phase_signature(first, batch)
    varying = Phase("sampled", first.model, variant=lambda step: step % 2)
    assert phase_signature(varying, batch, 0) != phase_signature(varying, batch, 1)
    assert phase_signature(varying, batch, 0) == phase_signature(varying, batch, 2)


def test_the_table_round_trips_exactly_and_a_corrupt_one_is_a_one_line_error(tmp_path):
    table = CalibrationTable({"abc": Timing("abc", [0.1 + 0.2, 0.35, 0.7], 0.41, "a label, with comma",
                                            ["scratch/train", "ki/train"])}, device="cpu", dtype="float32")
    table.after = {"abc": Timing("abc", [0.5, 0.55], 0.6)}
    path = tmp_path / CALIBRATION_FILE
    table.save(path)
    loaded = CalibrationTable.load(path)
    assert loaded.get("abc").step_s == 0.1 + 0.2 and loaded.get("abc").full_step_s == 0.41
    assert loaded.get("abc").phases == ["scratch/train", "ki/train"] and loaded.get("abc").label == table.get("abc").label
    assert loaded.after["abc"].rounds == [0.5, 0.55] and loaded.drift() == []  # [0.5, 0.55] is within [0.3, 0.7]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary file left
    frame = pd.read_csv(path)
    assert {"when", "signature", "step_s", "full_step_s", "spread", "round_1_s", "round_3_s"} <= set(frame.columns)
    for text in ("not,a,table\n1,2,3\n", "when,signature\nbefore,abc\n", path.read_text().replace("0.41", "-1")):
        path.write_text(text)
        with pytest.raises(BenchError, match=CALIBRATION_FILE) as error:
            CalibrationTable.load(path)
        assert "\n" not in str(error.value)


def test_before_and_after_tables_differ_only_beyond_their_spread():
    table = CalibrationTable({"a": Timing("a", [1.0, 1.1], 1.2), "b": Timing("b", [1.0, 1.02], 1.1)})
    table.after = {"a": Timing("a", [1.05, 1.2], 1.3), "b": Timing("b", [1.5, 1.6], 1.7)}
    assert table.drift() == [("b", pytest.approx(0.5))]  # a's ranges overlap; b moved 50%


# --------------------------------------------------------------------------- comparisons


@pytest.mark.slow
def test_every_phase_of_a_signature_gets_the_tables_reference_step_in_every_run(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "ROUNDS", 2)
    monkeypatch.setattr(calibration, "REPEATS", 2)
    out = tmp_path / "run"
    lines = []
    runner.compare(_config(corpus, out, ["scratch", "stackbert", "bert2bert"], seeds=2), echo=lines.append)
    table = CalibrationTable.load(out / CALIBRATION_FILE)
    assert set(table.after) == set(table.before)  # timed again after the last run
    plain = [timing for timing in table.before.values() if "scratch/train" in timing.phases]
    assert len(plain) == 1 and {"stackbert/train", "bert2bert/stage-2"} <= set(plain[0].phases)
    assert len([timing for timing in table.before.values() if "bert2bert/stage-1" in timing.phases[0]]) >= 2

    phases = _phases(out)
    assert len(phases) == 2 * 1 + 2 * 1 + 2 * 2
    assert (phases["reference_source"] == "comparison calibration").all()
    single = phases[~phases["signature"].str.contains("+", regex=False)]
    for signature, group in single.groupby("signature"):
        assert (group["reference_step_s"] == table.get(signature).step_s).all(), group
        assert (group["reference_s"] == group["steps"] * table.get(signature).step_s).all()
    assert set(single["run"][single["signature"] == plain[0].signature]) >= {
        "scratch-s0", "scratch-s1", "stackbert-s0", "stackbert-s1", "bert2bert-s0", "bert2bert-s1"}
    for signatures in phases["signature"]:  # a varying phase's variants are every one in the table
        assert all(table.get(signature) for signature in signatures.split("+"))
    assert {"load_avg", "slowdown", "contended"} <= set(phases.columns)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["signatures"] == len(table.before) and manifest["calibration"]["rounds"] == 2

    before = (out / CALIBRATION_FILE).read_bytes()
    lines.clear()
    runner.compare(_config(corpus, out, ["scratch", "stackbert", "bert2bert"], seeds=2, resume=True),
                   echo=lines.append)
    assert any("reused" in line for line in lines) and (out / CALIBRATION_FILE).read_bytes() == before


_KILLED_WHILE_TIMING = """
import os, signal, sys
from bench import calibration
from bench.cli import main
def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
calibration._time = killed
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_while_calibrating_leaves_no_table_and_resume_calibrates(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--methods", "scratch", "--seeds", "1", "--budget-steps", "6", "--corpus", str(corpus),
            "--out", str(out), "--no-progress"]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}  # as in this process
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_TIMING, *argv], check=False, capture_output=True,
                            text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / "manifest.json").exists() and not (out / CALIBRATION_FILE).exists()
    assert not (out / "runs").exists()
    assert main([*argv, "--resume"]) == 0
    assert "phase signatures timed" in capsys.readouterr().out
    assert CalibrationTable.load(out / CALIBRATION_FILE).before

    (out / CALIBRATION_FILE).write_text("when,signature\nbefore,???\n")  # a table edited by hand
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and CALIBRATION_FILE in err[0], err


_BURNER = "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n"


@pytest.mark.slow
def test_a_cpu_burner_makes_runs_contended_and_leaves_flops_savings_alone(corpus, tmp_path, monkeypatch):
    """The same comparison twice; the second with CPU burners running during stackbert's run only."""
    monkeypatch.setattr(calibration, "ROUNDS", 2)
    monkeypatch.setattr(calibration, "REPEATS", 2)
    quiet, busy = tmp_path / "quiet", tmp_path / "busy"
    runner.compare(_config(corpus, quiet, ["scratch", "stackbert"], seeds=1, budget_steps=12), echo=lambda line: None)

    train = one_run.train_run

    def burning(phases, budget, prepared, seed, loop, folder, *args, **kwargs):
        if Path(folder).name != "stackbert-s0":
            return train(phases, budget, prepared, seed, loop, folder, *args, **kwargs)
        burners = [subprocess.Popen([sys.executable, "-c", _BURNER]) for _ in range(4 * (os.cpu_count() or 2))]
        try:
            time.sleep(0.5)
            return train(phases, budget, prepared, seed, loop, folder, *args, **kwargs)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()

    monkeypatch.setattr(one_run, "train_run", burning)
    runner.compare(_config(corpus, busy, ["scratch", "stackbert"], seeds=1, budget_steps=12), echo=lambda line: None)

    stored = pd.read_csv(busy / "runs" / "stackbert-s0" / "phases.csv")
    judged = judged_phases(analyse(busy).data)["stackbert-s0"]
    assert judged["contended"].all(), (judged, stored[["slowdown", "load_avg"]])
    assert stored["slowdown"].iloc[0] > calibration.CONTENTION_THRESHOLD or judged["relative"].iloc[0] > 1.5

    scratch_curve = pd.read_csv(quiet / "runs" / "scratch-s0" / "curve.csv").dropna(subset=["val_loss"])
    target = float(scratch_curve["val_loss"].iloc[len(scratch_curve) // 2])  # both methods get there
    calm, loaded = analyse(quiet, target=target), analyse(busy, target=target)
    row = loaded.table.set_index("method").loc["stackbert"]
    assert row["time_contended"] and "stackbert-s0" in row["contended_runs"]
    markdown = format_markdown(loaded)
    main_table = markdown.split("## Main table", 1)[1]
    stackbert_line = next(line for line in main_table.splitlines() if line.startswith("| stackbert |"))
    assert stackbert_line.count(UNRELIABLE) == 1 and "%" in stackbert_line  # wall saved; FLOPs saved stays
    sunk = markdown.split("## Savings by cost, parent sunk", 1)[1].split("##", 1)[0]
    stackbert_sunk = next(line for line in sunk.splitlines() if line.startswith("| stackbert |"))
    assert stackbert_sunk.count(UNRELIABLE) == 4  # wall, energy, cloud $, energy $; FLOPs and reference kept
    assert "Contended runs" in loaded.text and "rerun on a quiet machine" in markdown
    assert "inherits wall time's contention" in markdown
    for frame in (calm.runs, loaded.runs):
        assert frame["savings_flops"].notna().all()
    assert list(calm.runs["savings_flops"]) == list(loaded.runs["savings_flops"])
    assert list(calm.runs["total_flops"]) == list(loaded.runs["total_flops"])
    assert not math.isnan(loaded.table.set_index("method").at["stackbert", "savings_reference_s"])
