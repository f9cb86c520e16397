"""One calibration table per comparison (bench/calibration.py): signatures, the table on disk, the same reference
step for the same signature in every run, --resume and kill -9, and contention flagged under a CPU burner."""

from __future__ import annotations

import csv
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
    table.after = {"abc": Timing("abc", [0.32, 0.35], 0.6, unreliable_reason="rounds disagree: for the test")}
    path = tmp_path / CALIBRATION_FILE
    table.save(path)
    loaded = CalibrationTable.load(path)
    assert loaded.get("abc").step_s == 0.1 + 0.2 and loaded.get("abc").full_step_s == 0.41
    assert loaded.get("abc").phases == ["scratch/train", "ki/train"] and loaded.get("abc").label == table.get("abc").label
    assert loaded.after["abc"].rounds == [0.32, 0.35] and loaded.drift() == []  # 0.32 is within 25% of 0.3
    assert loaded.get("abc").reliable and loaded.after["abc"].unreliable_reason == "rounds disagree: for the test"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary file left
    frame = pd.read_csv(path)
    assert {"when", "signature", "step_s", "full_step_s", "spread", "round_1_s", "round_3_s", "reliable",
            "unreliable_reason"} <= set(frame.columns)
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
    # "comparison calibration, unreliable: ..." where the shared machine made the table's rounds disagree
    assert phases["reference_source"].str.startswith("comparison calibration").all()
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


# --------------------------------------------------------------------------- reliability: no impossible numbers


class _GivenPhases:
    """A method whose phases are given: three signatures of bert-nano (every parameter trained, only the top
    layer, only the embeddings), named a, b and c."""

    def phases(self, context):
        model = get_size("bert-nano").build(128, 16, 0)
        named = dict(model.named_parameters())
        yield Phase("a", model)
        yield Phase("b", model, trainable=[p for name, p in named.items() if "layer.1." in name])
        yield Phase("c", model, trainable=[p for name, p in named.items() if "embeddings" in name])


def _calibrate_given(monkeypatch, seconds: dict[str, list[float]]) -> tuple[CalibrationTable, list[str]]:
    """calibrate() on _GivenPhases with each phase's successive timings scripted (`seconds[name]`, one per round)."""
    from bench.train import BatchSource, Budget, LoopConfig

    calls = {name: iter(values) for name, values in seconds.items()}

    def scripted(entry, loop, repeats):
        value = next(calls[entry.phase.name])
        return value, 1.1 * value

    monkeypatch.setattr(calibration, "_time", scripted)
    source = BatchSource(lambda step: _batch(), [_batch()], 64)
    lines = []
    table = calibration.calibrate({"given": _GivenPhases()}, lambda method, seed: None, 1, Budget("tokens", 640),
                                  lambda seed: source, LoopConfig(progress_bar=False), rounds=3, repeats=1,
                                  echo=lines.append)
    return table, lines


def test_rounds_that_disagree_are_timed_again_and_marked_unreliable_only_when_they_still_do(monkeypatch):
    table, lines = _calibrate_given(monkeypatch, {
        "a": [1.0, 1.02, 1.05],  # a quiet machine: within SPREAD_TOLERANCE
        "b": [1.0, 5.2, 4.0, 1.1, 1.05, 3.0],  # one slow round: three more, three of the six agree
        "c": [6.0, 1.0, 5.5, 5.0, 6.2, 4.9],  # busy in all but one round, and still so when timed again
    })
    by_name = {timing.phases[0].split("/")[1]: timing for timing in table.before.values()}
    assert len(by_name["a"].rounds) == 3 and by_name["a"].reliable
    assert len(by_name["b"].rounds) == 6 and by_name["b"].reliable and by_name["b"].step_s == 1.0
    assert len(by_name["c"].rounds) == 6 and not by_name["c"].reliable and by_name["c"].step_s == 1.0
    assert by_name["c"].unreliable_reason.startswith("rounds disagree: 1 of 6 within 25%")
    assert not table.reliable and list(table.unreliable()) == [by_name["c"].signature]
    assert any("disagree by more than 25%; 3 more rounds" in line for line in lines)
    entry = calibration.manifest_entry(table)
    assert entry["reliable"] is False and entry["unreliable"] == table.unreliable() and entry["rounds"] == 3


def test_a_quiet_calibration_stays_reliable_and_times_nothing_again(monkeypatch):
    table, lines = _calibrate_given(monkeypatch, {"a": [1.0, 1.1, 1.2], "b": [0.5, 0.52, 0.6], "c": [2.0, 2.0, 2.4]})
    assert table.reliable and all(len(timing.rounds) == 3 for timing in table.before.values())
    assert not lines and calibration.manifest_entry(table)["unreliable"] == {}


def test_an_after_table_that_still_disagrees_marks_the_before_value_unreliable(tmp_path):
    """The reported case: 0.845 s a step before the first run (a loaded machine), 0.068 s after the last."""
    before = CalibrationTable({"slow": Timing("slow", [0.845, 0.85, 0.86], 0.9),
                               "fine": Timing("fine", [0.1, 0.1, 0.11], 0.12),
                               "fluke": Timing("fluke", [0.2, 0.21, 0.2], 0.22)})
    takes = iter([
        CalibrationTable({"slow": Timing("slow", [0.068, 0.07, 0.07], 0.08), "fine": Timing("fine", [0.1, 0.11], 0.12),
                          "fluke": Timing("fluke", [0.5, 0.55, 0.5], 0.6)}, seconds=1.0),  # busy at the end
        CalibrationTable({"slow": Timing("slow", [0.069, 0.07, 0.068], 0.08), "fine": Timing("fine", [0.1], 0.12),
                          "fluke": Timing("fluke", [0.2, 0.2, 0.21], 0.22)}, seconds=1.0),  # timed again: quiet
    ])
    path = tmp_path / CALIBRATION_FILE
    lines = []
    calibration.recalibrate_after(before, path, lambda: next(takes), echo=lines.append)
    assert before.after["fluke"].rounds == [0.5, 0.55, 0.5, 0.2, 0.2, 0.21] and before.get("fluke").reliable
    assert before.get("fine").reliable and before.after["fine"].rounds == [0.1, 0.11]  # agreed: not timed again
    assert not before.get("slow").reliable and before.after_seconds == 2.0
    assert before.get("slow").unreliable_reason.startswith("before and after the runs disagree: 0.845 s before")
    assert "timing them again" in lines[0] and "unreliable for 1 of them" in lines[-1]
    loaded = CalibrationTable.load(path)
    assert loaded.unreliable() == before.unreliable() == {"slow": before.get("slow").unreliable_reason}
    frame = pd.read_csv(path).set_index(["when", "signature"])
    assert not frame.at[("before", "slow"), "reliable"] and frame.at[("before", "fine"), "reliable"]
    assert "0.845" in frame.at[("before", "slow"), "unreliable_reason"]
    assert calibration.manifest_entry(loaded)["reliable"] is False


def test_a_table_written_before_the_reliability_columns_is_judged_from_its_rounds(tmp_path):
    table = CalibrationTable({"busy": Timing("busy", [0.845, 4.4, 5.2], 0.9),
                              "quiet": Timing("quiet", [0.1, 0.11], 0.12), "moved": Timing("moved", [0.3, 0.31], 0.33)})
    table.after = {"busy": Timing("busy", [0.8, 0.9], 0.9), "quiet": Timing("quiet", [0.1, 0.1], 0.12),
                   "moved": Timing("moved", [0.07, 0.07], 0.08)}
    path = tmp_path / CALIBRATION_FILE
    table.save(path)
    rows = list(csv.DictReader(path.open(newline="")))
    _write_rows(path, [{key: value for key, value in row.items() if key not in ("reliable", "unreliable_reason")}
                       for row in rows])
    loaded = CalibrationTable.load(path)
    assert set(loaded.unreliable()) == {"busy", "moved"} and loaded.get("quiet").reliable
    assert loaded.get("busy").unreliable_reason.startswith("rounds disagree: 1 of 3")
    assert "before and after the runs disagree" in loaded.get("moved").unreliable_reason
    _write_rows(path, [{**row, "reliable": "maybe"} for row in rows])
    with pytest.raises(BenchError, match="bad `reliable`"):
        CalibrationTable.load(path)


def _write_rows(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_one_verdict_on_contention_and_an_impossible_slowdown_is_none():
    verdict = calibration.contention_verdict
    assert verdict(2.0, 5) is True and verdict(1.3, 5) is False
    assert verdict(2.0, 4) is None and verdict(math.nan, 50) is None  # too few steps; no calibrated step
    assert verdict(2.0, 50, calibration_reliable=False) is None
    assert verdict(0.3, 50) is None and verdict(0.5, 50) is False  # 3x faster than calibrated: the calibration
    assert calibration.too_fast_reason(0.08).startswith("the train steps ran 12x faster than calibrated")
    assert calibration.too_fast_reason(0.5) is None and calibration.too_fast_reason(0.0) is None


def _clock_phase() -> tuple[Phase, dict[str, torch.Tensor]]:
    phase = Phase("train", get_size("bert-nano").build(128, 16, 0))
    phase.prepare()
    return phase, _batch()


def test_the_clock_marks_reference_time_from_an_unreliable_value_and_does_not_judge_contention(tmp_path):
    from bench.collectors import RunInfo
    from bench.collectors.clock import ClockCollector

    phase, batch = _clock_phase()
    signature = phase_signature(phase, batch)
    busy = Timing(signature, [0.01, 0.05], 0.001, unreliable_reason="rounds disagree: for the test")
    clock = ClockCollector(RunInfo(torch.device("cpu"), tmp_path, calibration=CalibrationTable({signature: busy})))
    clock.start_phase(phase, batch, steps=6)
    with clock.window("train"):
        time.sleep(0.03)  # 5 ms a step against 1 ms calibrated: contended, were the table a measurement
    row = clock.end_phase(6, {})
    assert row["reference_s"] == 6 * 0.01 and row["slowdown"] > 3 and row["contended"] is None
    assert row["reference_source"] == "comparison calibration, unreliable: rounds disagree: for the test"


def test_a_phase_far_faster_than_its_calibration_marks_it_unreliable(tmp_path):
    from bench.collectors import RunInfo
    from bench.collectors.clock import ClockCollector

    phase, batch = _clock_phase()
    signature = phase_signature(phase, batch)
    slow = CalibrationTable({signature: Timing(signature, [0.845, 0.85], 0.9)})  # timed while the machine was busy
    clock = ClockCollector(RunInfo(torch.device("cpu"), tmp_path, calibration=slow))
    clock.start_phase(phase, batch, steps=6)
    with clock.window("train"):
        time.sleep(0.06)  # 10 ms a step against 0.9 s calibrated
    row = clock.end_phase(6, {})
    assert row["slowdown"] < 0.5 and row["contended"] is None
    assert row["reference_source"].startswith("comparison calibration, unreliable: the train steps ran")
    assert calibration.unreliable_reasons(row["reference_source"]) == [calibration.too_fast_reason(row["slowdown"])]


@pytest.mark.slow
def test_a_comparison_calibrated_on_a_busy_machine_says_so_everywhere(corpus, tmp_path, monkeypatch):
    """The reported case, end to end: the table before the first run timed 20x slow (the machine was loaded), the
    runs and the table after them quiet, and a CPU peak measured far too low both times (MFU far above 100%)."""
    from bench import hardware
    from bench.report import build_report

    monkeypatch.setattr(calibration, "ROUNDS", 2)
    monkeypatch.setattr(calibration, "REPEATS", 1)
    monkeypatch.setattr(hardware, "_CPU_PEAKS", {})
    monkeypatch.setattr(hardware, "_cpu_matmul_flops", lambda dtype, seconds=0.0: 1e6)
    busy = {"before the runs": True}
    real_time, train = calibration._time, one_run.train_run

    def loaded(entry, loop, repeats):
        reference, full = real_time(entry, loop, repeats)
        return (20 * reference, 20 * full) if busy["before the runs"] else (reference, full)

    def quiet(*args, **kwargs):
        busy["before the runs"] = False
        return train(*args, **kwargs)

    monkeypatch.setattr(calibration, "_time", loaded)
    monkeypatch.setattr(one_run, "train_run", quiet)
    out = tmp_path / "run"
    lines = []
    runner.compare(_config(corpus, out, ["scratch", "stackbert"], seeds=1, budget_steps=12), echo=lines.append)

    table = CalibrationTable.load(out / CALIBRATION_FILE)
    assert table.unreliable() and set(table.unreliable()) == set(table.before)
    assert all("before and after the runs disagree" in reason for reason in table.unreliable().values())
    assert json.loads((out / "manifest.json").read_text())["calibration"]["reliable"] is False
    assert any("timing them again" in line for line in lines)
    phases = _phases(out)
    judged = phases[phases["slowdown"].notna()]
    assert len(judged) and (judged["slowdown"] < calibration.FASTEST_PLAUSIBLE_SLOWDOWN).all()
    assert judged["reference_source"].str.startswith("comparison calibration, unreliable: the train steps ran").all()
    assert phases["contended"].isna().all()  # never judged against a calibration proven wrong
    assert phases["mfu"].isna().all() and phases["mfu_peak_source"].str.startswith(hardware.ABOVE_PEAK).all()
    assert phases["mfu_peak_source"].str.contains("measured again").all()

    report = build_report(out)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["mfu"].isna().all() and not summary["calibration_reliable"].any()
    markdown = (out / "report.md").read_text()
    assert "| unreliable: above the peak |" in markdown and "not a measurement" in markdown
    assert "unreliable: calibration" in report.text
