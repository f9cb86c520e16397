"""A graceful stop on the signals a cluster sends before it ends a job: SIGTERM (SLURM's preemption, `scancel` and
the time limit; what torchrun forwards to its workers), SIGHUP (a closed terminal or ssh session) and SIGUSR1 (SLURM's
`--signal=B:USR1@SECONDS`, sent that long before the time limit).

The command line installs the handlers for the whole command (`handlers`). Inside the training loop (`deferred`) the
first signal only takes note: the loop asks `requested()` at its step boundaries, finishes the step, writes a mid-run
checkpoint and raises `Stopped` (bench/train.py); the command line prints the command that continues and exits
128 + the signal's number (129, 138, 143), as SIGINT gives 130. Outside the loop there is nothing a checkpoint could
keep (preparing data, calibrating, writing records: every write is atomic), so a signal there raises `Stopped` at
once, as SIGINT raises KeyboardInterrupt. A second signal while stopping raises at once wherever it lands: a
checkpoint being written is never published, so the one before stays valid.

SIGINT keeps Python's own KeyboardInterrupt: Ctrl-C stops at once, and `--resume` continues from the last checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bench.errors import Stopped

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)

_requested: int | None = None  # the first stop signal this command received
_deferring = 0  # how many `deferred` blocks are open: the training loop stops at its next step boundary


def _on_signal(number: int, frame) -> None:
    global _requested
    first = _requested is None
    if first:
        _requested = number
    if first and _deferring:
        return  # the training loop stops at its next step boundary
    raise Stopped(number, "" if first else "(a second signal: at once)")


@contextmanager
def handlers() -> Iterator[None]:
    """The stop signals handled for the block (a command), the handlers before them restored after it. Only the main
    thread can install handlers; elsewhere (a command run from a worker thread) the signals keep theirs."""
    global _requested, _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested, _deferring = None, 0
    before = {number: signal.signal(number, _on_signal) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
        _requested, _deferring = None, 0


@contextmanager
def deferred(done: str = "") -> Iterator[None]:
    """The block polls `requested()` at its step boundaries: a first signal there waits for it. A signal that the block
    left unanswered (it arrived after the last boundary) stops the command once the block is over (`done`: what it
    finished, for the message)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _requested is not None and not _deferring:
        raise Stopped(_requested, f"after {done}" if done else "")


def requested() -> int | None:
    """The number of the stop signal received, or None."""
    return _requested


def agree(number: int) -> None:
    """Take `number` (a signal the torchrun ranks agreed on, received by another rank) as this process's own."""
    global _requested
    _requested = _requested or number


# ----------------------------------------------------------------------------------- tests only

TEST_KILL = "GROWBENCH_TEST_KILL"
"""Tests only: `PHASE:STEP[:SIGNAL][:save]` makes the process send itself a real signal (SIGKILL unless SIGNAL names
INT, TERM, HUP or USR1) once it has trained STEP steps of the phase named PHASE, or, with `save`, in the middle of
writing the first checkpoint at or after that step (its files written, not yet published). Several, comma-separated,
fire in turn; each run's checkpoints read them afresh (bench/checkpoint.py)."""
TEST_SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP, "USR1": signal.SIGUSR1}


@dataclass
class SelfSignal:
    """One of GROWBENCH_TEST_KILL's signals; each fires once."""

    phase: str
    step: int
    signal: int
    in_save: bool
    fired: bool = False

    @classmethod
    def from_environment(cls) -> list[SelfSignal]:
        signals = []
        for text in filter(None, os.environ.get(TEST_KILL, "").split(",")):
            phase, step, *flags = text.split(":")
            number = next((TEST_SIGNALS[flag] for flag in flags if flag in TEST_SIGNALS), signal.SIGKILL)
            signals.append(cls(phase, int(step), number, "save" in flags))
        return signals

    def due(self, phase: str, step: int, in_save: bool) -> bool:
        """At a step of `phase` (exactly STEP), or while a checkpoint is written (STEP or later)."""
        return (not self.fired and self.in_save == in_save and phase == self.phase
                and (step >= self.step if in_save else step == self.step))


def send_due_signal(signals: list[SelfSignal], phase: str, step: int, in_save: bool = False) -> None:
    """Send the first of `signals` due at this moment (a step of `phase`, or a checkpoint being written)."""
    for due in signals:
        if due.due(phase, step, in_save):
            due.fired = True
            os.kill(os.getpid(), due.signal)
            return
