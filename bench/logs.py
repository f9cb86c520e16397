"""What a run tells the person or pipeline watching it, set once per process (like `logging`).

Modes: "auto" — a progress bar when stderr is a terminal, else one compact line per eval point (a
non-interactive log stays small: no carriage-return bar updates); "lines" — those lines even on a terminal;
"quiet" — nothing but errors and the final result; "json" — one JSON object per event on stdout, for
pipelines. Messages (`echo`) follow the same mode.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

from tqdm.auto import tqdm

MODES = ("auto", "lines", "quiet", "json")
_mode = "auto"


def configure(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown log mode {mode!r}; use one of {', '.join(MODES)}")
    global _mode
    _mode = mode


def mode() -> str:
    return _mode


def event(kind: str, **fields: Any) -> None:
    """One event: a JSON line in json mode; nothing otherwise (the other modes have their own words)."""
    if _mode == "json":
        print(json.dumps({"event": kind, "time": round(time.time(), 3), **fields}, default=str), flush=True)


def echo(text: str) -> None:
    """A message for whoever watches: a line, or a `message` event."""
    if _mode == "json":
        event("message", text=text)
    elif _mode != "quiet":
        print(text, flush=True)


def warn(text: str) -> None:
    """A warning about the result (not an error): on stderr, or a `warning` event; nothing when quiet."""
    if _mode == "json":
        event("warning", text=text)
    elif _mode != "quiet":
        print(text, file=sys.stderr, flush=True)


def _bars() -> bool:
    return _mode == "auto" and sys.stderr.isatty()


class RunProgress:
    """Progress of one run: its phases' bars (terminal only) and a line or event per eval point, with an ETA
    extrapolated from this session's wall time and the budget it spent (a resumed run starts part-way)."""

    def __init__(self, label: str, enabled: bool = True, spent_at_start: float = 0.0):
        self.label, self.enabled = label, enabled
        self.started, self.spent_at_start = time.monotonic(), spent_at_start
        self.bar: tqdm | None = None
        self.phase = ""

    def start_phase(self, phase: str, steps: int, done: int = 0) -> None:
        self.close()
        self.phase = phase
        self.bar = tqdm(total=steps, initial=done, desc=f"{self.label} {phase}".strip(), leave=False,
                        dynamic_ncols=True, disable=not (self.enabled and _bars()))

    def advance(self, steps: int, loss: float, lr: float) -> None:
        """`steps` more steps done; `loss` their mean train loss."""
        self.bar.update(steps)
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")

    def eval_point(self, step: int, budget_spent: float, val_loss: float, train_loss: float) -> None:
        """`budget_spent`: the fraction of the run's budget spent so far."""
        if not self.enabled or _bars() or _mode == "quiet":
            return
        elapsed = time.monotonic() - self.started
        done_here = budget_spent - self.spent_at_start
        eta = elapsed * (1 - budget_spent) / done_here if done_here > 0 else math.nan
        if _mode == "json":
            event("eval", run=self.label, phase=self.phase, step=step, budget_spent=round(budget_spent, 4),
                  val_loss=val_loss, train_loss=None if math.isnan(train_loss) else train_loss,
                  elapsed_s=round(elapsed, 1), eta_s=None if math.isnan(eta) else round(eta, 1))
        else:
            print(f"{self.label} {self.phase}: step {step}, {100 * budget_spent:.0f}% of budget, val loss "
                  f"{val_loss:.4f}" + ("" if math.isnan(eta) else f", eta {human_duration(eta)}"), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def human_duration(seconds: float) -> str:
    """`42 s`, `3.5 min`, `2.1 h`, `1.3 days`; `unknown` for NaN or infinity."""
    if not math.isfinite(seconds):
        return "unknown"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
