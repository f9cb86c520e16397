"""Mid-run checkpoints: the loop's state, saved at every eval point and every `every_seconds` between them, so
that a run killed at 99% continues from there to the result an uninterrupted run gives (on CPU: the same
losses, weights and FLOPs; time and energy are the sums of the sessions).

RUN/checkpoint/
  LATEST          the name of the newest complete checkpoint below; replaced atomically once it is written,
                  so a kill at any moment leaves the previous one readable
  000012/
    meta.json     where the run was: phase, local step, global step (for people and tests)
    state.pt      the ledger, the phase's step plan, the train losses since the last eval point, the curve and
                  phase rows so far, the phase's settings, the collectors' running totals (each rank's, under
                  torchrun), the RNG streams
    optimizer.pt  the training phase's AdamW state
    phase-0.pt    each finished phase's trained model (hard links to the previous checkpoint's files) ...
    phase-2.pt    ... and the training phase's model at the saved step

Everything is written with `torch.save` and read with `torch.load(weights_only=True)`: tensors, numbers,
strings and containers, never arbitrary objects.

A method is a generator that builds each phase from the trained state of the last (MSLT's stages, LiGO's
materialised model), so resuming runs it again from the start: each phase that had finished is built and gets
its saved end state, without training, before the next is asked for; the phase that was training gets its
state at the saved step, with the optimizer, the ledger and the collectors' totals, and, last (building phases
draws random numbers), the RNG streams.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bench.errors import BenchError
from bench.records import atomic_path
from bench.stopping import TEST_KILL, SelfSignal, send_due_signal

if TYPE_CHECKING:
    from bench.collectors import CollectorSet
    from bench.phases import Phase
    from bench.step_plan import StepPlan
    from bench.train import LoopState

log = logging.getLogger(__name__)
_UMASK = os.umask(0o022)
os.umask(_UMASK)

FORMAT = 3
LATEST = "LATEST"
__all__ = ["FORMAT", "LATEST", "TEST_KILL", "Checkpointing", "Checkpoints", "Saved", "remove_checkpoints"]
"""TEST_KILL, the tests' hook (bench/stopping.py), is named here too: the checkpoints fire it."""


@dataclass
class Checkpointing:
    """Where one run keeps its checkpoints, how often it saves one between eval points, whether the folder
    stays once the run is recorded, and whether the run continues from the checkpoint it finds there."""

    folder: Path
    every_seconds: float = 600.0
    keep: bool = False
    resume: bool = False


def remove_checkpoints(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class Checkpoints:
    """One run's checkpoints; without a `Checkpointing`, nothing is saved or resumed."""

    def __init__(self, setting: Checkpointing | None, identity: dict | None = None):
        self.setting = setting
        self.identity = dict(identity or {})  # what must match for a checkpoint to be this run's (seed, budget)
        self._current: Path | None = None  # the newest complete checkpoint: later ones link its finished phases
        self._meta: dict = {}
        self._last = time.monotonic()
        self._failed = False
        self._test_signals = SelfSignal.from_environment() if setting is not None else []  # TEST_KILL's

    @property
    def enabled(self) -> bool:
        return self.setting is not None and not self._failed

    def wanted(self, phase: Phase, local_step: int, at_eval: bool) -> bool:
        """At a point where the loop reads its losses: whether to save a checkpoint there (always at an eval point,
        between them once every_seconds passed). Under torchrun rank 0 decides, for every rank."""
        send_due_signal(self._test_signals, phase.name, local_step)
        return self.enabled and (at_eval or time.monotonic() - self._last >= self.setting.every_seconds)

    # ------------------------------------------------------------------------------------------- saving

    def save(self, state: LoopState, phase: Phase, optimizer: torch.optim.Optimizer, collectors: CollectorSet) -> None:
        """A checkpoint at a step boundary where `wanted` said so (every rank calls it: the collectors' totals are
        gathered from all; rank 0 alone writes). Its I/O is logged as overhead. A write that fails (a full disk:
        OSError, or RuntimeError from torch's writer) stops checkpointing with a warning; the run goes on."""
        totals = collectors.state_dict()
        if not self.enabled:
            return
        with collectors.window("overhead"):
            try:
                self._write(state, phase, optimizer, totals)
            except (OSError, RuntimeError) as error:
                self._failed = True
                log.warning("checkpoint: cannot write %s (%s); the run goes on without checkpoints",
                            self.setting.folder, _first_line(error))
        self._last = time.monotonic()

    def _write(self, state: LoopState, phase: Phase, optimizer: torch.optim.Optimizer, totals: list[dict]) -> None:
        folder, index = self.setting.folder, state.phase_index
        folder.mkdir(parents=True, exist_ok=True)
        self._remove_others()  # what an interrupted save left
        finished = self._finished_phase_files(index)
        name = f"{self._meta.get('number', 0) + 1:06d}"
        started = time.perf_counter()
        writing = Path(tempfile.mkdtemp(prefix=".writing-", dir=folder))
        try:
            for number, source in enumerate(finished):
                _link(source, writing / f"phase-{number}.pt")
            torch.save(_models(phase), writing / f"phase-{index}.pt")
            torch.save(optimizer.state_dict(), writing / "optimizer.pt")
            torch.save(self._state(state, phase, totals), writing / "state.pt")
            send_due_signal(self._test_signals, phase.name, state.local_step, in_save=True)
            meta = {"format": FORMAT, "number": int(name), "phase_index": index, "phase": phase.name,
                    "phases": [row["phase"] for row in state.phase_rows] + [phase.name],
                    "local_step": state.local_step, "phase_steps": len(state.plan),
                    "phase_done": state.local_step == len(state.plan), "step": state.ledger.step,
                    "identity": self.identity, "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "bytes": sum(path.stat().st_size for path in writing.iterdir()),
                    "write_s": round(time.perf_counter() - started, 4)}
            (writing / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            os.chmod(writing, 0o777 & ~_UMASK)  # as an ordinary folder (mkdtemp's is private)
            os.rename(writing, folder / name)
        finally:
            shutil.rmtree(writing, ignore_errors=True)
        with atomic_path(folder / LATEST) as pointer:  # the switch: one atomic rename
            pointer.write_text(name + "\n")
        self._current, self._meta = folder / name, meta
        self._remove_others()

    def _finished_phase_files(self, index: int) -> list[Path]:
        """The end states of phases 0..index-1, from the newest checkpoint (saved at the end of each phase)."""
        if index == 0:
            return []
        meta = self._meta
        if self._current is None or meta["phase_index"] < index - 1 or (
                meta["phase_index"] == index - 1 and not meta["phase_done"]):
            raise AssertionError(f"checkpoint: no checkpoint was saved at the end of phase {index - 1}")
        return [self._current / f"phase-{number}.pt" for number in range(index)]

    def _state(self, state: LoopState, phase: Phase, totals: list[dict]) -> dict[str, Any]:
        ledger = state.ledger
        return {
            "format": FORMAT,
            "ledger": {key: getattr(ledger, key) for key in ("spent", "step", "tokens", "flops", "next_eval")},
            "plan": {"steps": state.plan.steps, "costs": state.plan.costs},
            "local_step": state.local_step, "loss_sum": state.loss_sum, "loss_steps": state.loss_steps,
            "phase_start": list(state.phase_start), "boundary": state.boundary, "curve": state.curve,
            "phase_rows": state.phase_rows,
            "settings": phase.settings, "collectors": totals, "rng": rng_state(),
        }

    def _remove_others(self) -> None:
        """Everything in the folder but LATEST and the newest checkpoint: older ones, interrupted writes."""
        for path in self.setting.folder.iterdir():
            if path.name != LATEST and path != self._current:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------- resuming

    def load(self, identity: dict) -> Saved | None:
        """The checkpoint to continue from; None to start the run (then, or when the checkpoint cannot be read or is
        another run's, the folder is emptied)."""
        self.identity |= identity
        if self.setting is None:
            return None
        folder = self.setting.folder
        if not self.setting.resume or not (folder / LATEST).exists():
            remove_checkpoints(folder)
            return None
        try:
            saved = Saved.read(folder / (folder / LATEST).read_text().strip(), self.identity)
        except Exception as error:  # noqa: BLE001 — whatever is wrong with it, the run can start over
            log.warning("checkpoint %s cannot be used (%s: %s); the run starts over", folder,
                        type(error).__name__, _first_line(error))
            remove_checkpoints(folder)
            return None
        self._current, self._meta = saved.folder, saved.meta
        log.info("%s: continuing from its checkpoint (phase %s, step %d of %d; global step %d)",
                 folder.parent.name, saved.meta["phase"], saved.meta["local_step"], saved.meta["phase_steps"],
                 saved.meta["step"])
        return saved


class Saved:
    """A checkpoint read back, restored piece by piece as the loop rebuilds the method's phases."""

    def __init__(self, folder: Path, meta: dict, state: dict, models: list[dict], optimizer: dict):
        self.folder, self.meta, self.state, self.models, self.optimizer = folder, meta, state, models, optimizer

    @classmethod
    def read(cls, folder: Path, identity: dict) -> Saved:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')}, this growbench reads {FORMAT}")
        if meta.get("identity") != json.loads(json.dumps(identity)):
            raise ValueError(f"saved by a run with other settings ({meta.get('identity')})")

        def load(name: str, mmap: bool = False):
            return torch.load(folder / name, map_location="cpu", weights_only=True, mmap=mmap)

        models = [load(f"phase-{number}.pt", mmap=True) for number in range(meta["phase_index"] + 1)]
        return cls(folder, meta, load("state.pt"), models, load("optimizer.pt"))

    @property
    def phase_index(self) -> int:
        return self.meta["phase_index"]

    def restore_loop(self, state: LoopState) -> None:
        """What the loop carries: the ledger, the curve and phase rows, the phase's step and losses."""
        saved = self.state
        for key, value in saved["ledger"].items():
            setattr(state.ledger, key, value)
        state.curve, state.phase_rows = saved["curve"], saved["phase_rows"]
        state.local_step, state.loss_sum, state.loss_steps = saved["local_step"], saved["loss_sum"], saved["loss_steps"]
        state.phase_start = tuple(saved["phase_start"])
        state.boundary = dict(saved["boundary"])

    def plan(self, phase: Phase) -> StepPlan:
        from bench.step_plan import StepPlan

        return StepPlan(self.state["plan"]["steps"], self.state["plan"]["costs"], phase.variant)

    def restore_finished(self, phase: Phase, state: LoopState) -> None:
        """A phase that had finished before the checkpoint: its trained state, and its row's settings (a method
        may still add to them, as it would have)."""
        index = state.phase_index
        self._load_models(index, phase)
        row = state.phase_rows[index]
        phase.settings.update(row["settings"])
        row["settings"] = phase.settings

    def restore_phase(self, phase: Phase, optimizer: torch.optim.Optimizer, collectors: CollectorSet) -> None:
        """The phase that was training (call after the collectors' `start_phase`): weights, AdamW state,
        settings, the collectors' totals, then the RNG streams."""
        self._load_models(self.phase_index, phase)
        optimizer.load_state_dict(self.optimizer)
        phase.settings.update(self.state["settings"])
        collectors.load_state_dict(self.state["collectors"])
        set_rng_state(self.state["rng"])
        self.models, self.optimizer = [], {}  # let the mapped files go

    def _load_models(self, index: int, phase: Phase) -> None:
        expected = self.meta["phases"][index]
        if phase.name != expected:
            raise BenchError(f"the checkpoint in {self.folder.parent} was saved by other phases (phase {index} "
                             f"was {expected!r}, the method now yields {phase.name!r}); delete the folder to start "
                             "the run over")
        models = self.models[index]
        phase.model.load_state_dict(models["model"])
        if "eval_model" in models:
            phase.eval_model.load_state_dict(models["eval_model"])


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def _models(phase: Phase) -> dict[str, dict[str, torch.Tensor]]:
    models = {"model": dict(phase.model.state_dict())}
    if phase.eval_model is not phase.model:
        models["eval_model"] = dict(phase.eval_model.state_dict())
    return models


def _link(source: Path, target: Path) -> None:
    """A finished phase's file is never rewritten, so checkpoints share it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def rng_state() -> dict[str, Any]:
    """Every RNG stream training may draw from: torch's CPU generator (dropout), CUDA's when in use, Python's
    `random` and NumPy's global one."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                       "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
