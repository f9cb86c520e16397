"""Logs that fit pipelines: progress bars only on a terminal, one compact line per eval point otherwise,
--quiet, and --log-json with one JSON object per event."""

from __future__ import annotations

import json

import pytest

from bench import logs
from bench.cli import main

PER_RUN_BYTES = 20_000


@pytest.fixture(autouse=True)
def _auto_mode():
    yield
    logs.configure("auto")


def _compare(corpus, out, *extra: str) -> list[str]:
    return ["compare", "--methods", "scratch", "--seeds", "1", "--budget-steps", "20", "--corpus", str(corpus),
            "--out", str(out), *extra]


def test_a_non_interactive_log_is_one_line_per_eval_point_and_small(small_corpus, tmp_path, capsys):
    assert main(_compare(small_corpus, tmp_path / "run")) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err  # no bar updates in a log file
    eval_lines = [line for line in captured.out.splitlines() if "% of budget, val loss" in line]
    assert len([line for line in eval_lines if line.startswith("scratch s0 train:")]) == 20  # --eval-points 20
    assert "eta" in eval_lines[1]
    assert len((captured.out + captured.err).encode()) < PER_RUN_BYTES


def test_log_json_is_one_json_object_per_line(small_corpus, tmp_path, capsys):
    assert main(_compare(small_corpus, tmp_path / "run", "--log-json")) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = {event["event"] for event in events}
    assert {"message", "eval", "result"} <= kinds
    evals = [event for event in events if event["event"] == "eval" and event["run"] == "scratch s0"]
    assert len(evals) == 20 and evals[-1]["budget_spent"] == 1.0 and isinstance(evals[-1]["val_loss"], float)
    assert events[-1] == {**events[-1], "event": "result", "report": str(tmp_path / "run" / "report.md")}


def test_quiet_prints_the_result_only(small_corpus, tmp_path, capsys):
    assert main(_compare(small_corpus, tmp_path / "run", "--quiet")) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"results: {tmp_path / 'run'}/ (report: {tmp_path / 'run' / 'report.md'})"]
    assert captured.err == ""
