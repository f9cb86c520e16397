"""The CI gate: baselines written from synthetic run directories, and runs that regress, improve or moved machine."""

from __future__ import annotations

import json

import pytest
from test_report import SYNTHETIC_CPU, curve_loss, default_specs, make_run_dir

from bench.check import QUANTITIES, check, write_baseline
from bench.errors import BenchError

FLOORS = {quantity.column: quantity.floor for quantity in QUANTITIES}


def _verdicts(result, method: str) -> dict[str, str]:
    return {row.quantity: row.verdict for row in result.rows if row.method == method}


@pytest.fixture
def baseline(tmp_path):
    """A baseline written from the default synthetic comparison on SYNTHETIC_CPU."""
    run_dir = make_run_dir(tmp_path / "baseline-run")
    path = tmp_path / "baselines" / "bert-nano_bert-micro.json"
    written = write_baseline(run_dir, path)
    return run_dir, path, written


def test_the_baseline_records_what_the_gate_needs(baseline):
    _, path, written = baseline
    stored = json.loads(path.read_text())
    assert stored == written
    assert stored["pair"] == "bert-nano:bert-micro" and stored["seeds"] == [0, 1, 2]
    assert stored["budget"]["value"] == 1.2e13 and "Synthetic CPU" in stored["hardware_fingerprint"]
    ligo, mslt = stored["methods"]["ligo"], stored["methods"]["mslt"]
    assert ligo["reached"] is True and mslt["reached"] is False
    assert ligo["quantities"]["savings_flops"]["value"] == pytest.approx(0.46, abs=0.02)
    assert mslt["quantities"]["savings_flops"]["value"] is None  # not reached: no number, not 0
    for quantity, entry in ligo["quantities"].items():
        assert entry["tolerance"] >= FLOORS[quantity]


def test_tolerance_widens_with_the_seed_spread(tmp_path):
    specs = default_specs()
    specs["ligo"].loss = lambda step, seed: curve_loss(3.0, 8.0, 5.0)(step, 0) + 0.08 * seed  # seeds far apart
    specs["ki"].loss = lambda step, seed: curve_loss(3.0, 10.0, 3.5)(step, 0)  # every seed the same curve
    written = write_baseline(make_run_dir(tmp_path / "run", specs), tmp_path / "b.json")
    noisy = written["methods"]["ligo"]["quantities"]
    assert noisy["savings_flops"]["tolerance"] > FLOORS["savings_flops"]
    assert noisy["final_val_loss"]["tolerance"] > FLOORS["final_val_loss"]
    for quantity, entry in written["methods"]["ki"]["quantities"].items():
        assert entry["tolerance"] == FLOORS[quantity], quantity


def test_the_run_that_made_the_baseline_passes(baseline):
    run_dir, path, _ = baseline
    result = check(run_dir, path)
    assert result.ok, result.text
    assert all(row.verdict in ("ok", "n/a (target not reached)") for row in result.rows), result.text
    assert _verdicts(result, "mslt")["reaches target"] == "ok"
    assert not result.notes


def test_a_planted_flops_regression_fails(baseline, tmp_path):
    _, path, _ = baseline
    specs = default_specs()
    specs["ligo"].loss = curve_loss(3.0, 8.0, 4.0)  # learns slower: reaches τ ~13 points of savings later
    result = check(make_run_dir(tmp_path / "worse", specs), path)
    assert not result.ok
    assert _verdicts(result, "ligo")["FLOPs savings"] == "REGRESSION"
    assert _verdicts(result, "ki")["FLOPs savings"] == "ok"
    regressions = sum(row.verdict == "REGRESSION" for row in result.rows)
    assert result.text.startswith(f"{regressions} regression(s)")
    line = next(line for line in result.text.splitlines() if line.startswith("ligo") and "FLOPs savings" in line)
    assert "REGRESSION" in line and "pts" in line


def test_losing_the_target_is_a_regression_and_an_improvement_is_not(baseline, tmp_path):
    _, path, _ = baseline
    specs = default_specs()
    specs["ligo"].loss = curve_loss(3.5, 8.0, 5.0)  # now ends above τ
    specs["ki"].loss = curve_loss(3.0, 10.0, 4.5)  # now reaches τ much earlier
    result = check(make_run_dir(tmp_path / "moved", specs), path)
    assert not result.ok
    assert _verdicts(result, "ligo")["reaches target"] == "REGRESSION"
    assert _verdicts(result, "ki")["FLOPs savings"] == "improved"
    assert _verdicts(result, "ki")["final val loss"] == "improved"  # 3.21 -> 3.08 at the budget


def test_time_and_energy_are_judged_only_on_the_same_hardware(baseline, tmp_path):
    _, path, _ = baseline
    specs = default_specs()
    specs["ligo"].seconds_per_step = 0.9  # same FLOPs, same losses, but ligo's steps take 80% longer
    same_machine = check(make_run_dir(tmp_path / "slow-here", specs), path)
    assert not same_machine.ok
    assert _verdicts(same_machine, "ligo")["wall-time savings"] == "REGRESSION"
    assert _verdicts(same_machine, "ligo")["energy savings"] == "REGRESSION"

    other_machine = {**SYNTHETIC_CPU, "cpu_model": "Another CPU", "cpu_cores": 8}
    elsewhere = check(make_run_dir(tmp_path / "slow-elsewhere", specs, hardware=other_machine), path)
    assert elsewhere.ok, elsewhere.text
    verdicts = _verdicts(elsewhere, "ligo")
    assert verdicts["wall-time savings"] == verdicts["energy savings"] == "skipped (other hardware)"
    assert verdicts["FLOPs savings"] == "ok"
    assert any("Hardware differs" in note for note in elsewhere.notes) and "note: Hardware differs" in elsewhere.text


def test_software_versions_do_not_count_as_other_hardware(baseline, tmp_path):
    _, path, _ = baseline
    upgraded = {**SYNTHETIC_CPU, "torch": "2.14.0", "platform": "Linux-6.9"}
    result = check(make_run_dir(tmp_path / "upgraded", hardware=upgraded), path)
    assert result.ok and not any("Hardware differs" in note for note in result.notes)


def test_a_method_that_no_longer_finishes_is_a_regression(baseline, tmp_path):
    _, path, _ = baseline
    specs = default_specs()
    specs["ligo"].states = {0: "diverged", 1: "failed", 2: "diverged"}
    result = check(make_run_dir(tmp_path / "broken", specs), path)
    assert not result.ok and _verdicts(result, "ligo") == {"finished runs": "REGRESSION"}
    with pytest.raises(BenchError, match="no finished run of ligo"):
        write_baseline(tmp_path / "broken", tmp_path / "from-broken.json")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"format": "something-else/9"}), "format"),
    (json.dumps({"format": "growbench-baseline/1", "pair": "bert-nano:bert-micro"}), "lacks"),
    (json.dumps({"format": "growbench-baseline/1", "pair": "p", "budget": {}, "hardware_fingerprint": "",
                 "methods": {"ligo": {"reached": True, "quantities": {"savings_flops": {"value": 0.4,
                                                                                      "tolerance": "wide"}}}}}),
     "numeric 'tolerance'"),
])
def test_a_malformed_baseline_is_a_bench_error(baseline, tmp_path, content, message):
    run_dir, _, _ = baseline
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BenchError, match=message):
        check(run_dir, path)


def test_baseline_and_run_that_do_not_match_are_bench_errors(baseline, tmp_path):
    run_dir, path, _ = baseline
    with pytest.raises(BenchError, match="does not exist"):
        check(run_dir, tmp_path / "missing.json")
    specs = default_specs()
    del specs["mslt"]
    with pytest.raises(BenchError, match="lacks method"):
        check(make_run_dir(tmp_path / "fewer", specs), path)
    with pytest.raises(BenchError, match="is for pair"):
        check(make_run_dir(tmp_path / "other-pair", pair="bert-mini:bert-small"), path)


def test_noisy_quantities_are_judged_on_the_interval_not_one_mean():
    from bench.check import QUANTITIES, _judge

    wall = next(q for q in QUANTITIES if q.column == "savings_train_s")
    expected = {"value": 0.30, "tolerance": 0.10}
    # the mean fell 15 points, but the interval still reaches into the band: noise, not a verdict
    assert _judge(wall, expected, 0.15, "m", interval=(0.05, 0.25)).verdict == "ok"
    # the whole interval below the band: a regression
    assert _judge(wall, expected, 0.10, "m", interval=(0.05, 0.15)).verdict == "REGRESSION"
    # without an interval (one seed), the mean is judged
    assert _judge(wall, expected, 0.15, "m").verdict == "REGRESSION"
