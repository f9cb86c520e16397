"""The run directory: the contract between training and reporting. Every write is atomic.

RUN_DIR/
  manifest.json                 what was run, on what, with which prices
  runs/<method>-s<seed>/        curve.csv, phases.csv, status.json, model/
  parent/                       the parent's own curve.csv, phases.csv, status.json

A finished run's status.json holds the SHA-256 of every file of the run (`files`), written last: whoever reads
the run (report, check, baseline, --resume) verifies them, so a truncated or edited file is named, never read
as data. Files and folders get the modes the umask gives (temporary files are created private).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError

DONE, RUNNING, DIVERGED, FAILED = "done", "running", "diverged", "failed"
FINISHED = (DONE, DIVERGED)  # a result: the run reached its end (or showed that the method diverges)
STATUS, CHECKPOINT = "status.json", "checkpoint"
TEMPORARY_PREFIX = "."  # atomic writes go through `.<name>.<random>` siblings; so do lock files

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _public(path: Path, folder: bool = False) -> None:
    """Give a finished temporary file or folder the mode an ordinary create would have had."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _public(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BenchError(f"{path} is not valid JSON ({error})") from None
    except OSError as error:
        raise BenchError(f"cannot read {path}: {error.strerror}") from None


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        _public(tmp, folder=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_name(method: str, seed: int) -> str:
    return f"{method.replace(':', '_')}-s{seed}"


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_files(folder: Path) -> list[Path]:
    """The files a run's checksums cover: all but status.json, checkpoints and temporary or lock files."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (path.is_file() and relative.parts[0] not in (STATUS, CHECKPOINT)
                and not any(part.startswith(TEMPORARY_PREFIX) for part in relative.parts)):
            files.append(path)
    return files


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete what interrupted atomic writes left in `folder` (not below it): `.<name>.<random>` siblings.
    Call it only on a folder this process holds the lock of."""
    stray = [path for path in folder.glob(f"{TEMPORARY_PREFIX}*.*") if not path.name.endswith(".lock")] \
        if folder.is_dir() else []
    for path in stray:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return stray


class RunDir:
    """Paths and status of one run (a method and seed, or the parent) inside RUN_DIR."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    def status(self) -> dict | None:
        return read_json(self.status_path) if self.status_path.exists() else None

    def is_done(self) -> bool:
        status = self.status()
        return status is not None and status.get("state") == DONE

    def set_status(self, state: str, **fields: Any) -> None:
        """Write status.json; a finished state also records the checksum of every file of the run."""
        if state in FINISHED:
            fields["files"] = {str(path.relative_to(self.path)): file_checksum(path)
                               for path in _recorded_files(self.path)}
        write_json(self.status_path, {"state": state, **fields})

    def damaged(self) -> list[tuple[str, str]]:
        """(file, what is wrong) for each file of a finished run that is missing or differs from its recorded
        checksum; empty when all agree, or for a run that recorded none (unfinished, or an older format)."""
        status = self.status() or {}
        recorded = status.get("files")
        if status.get("state") not in FINISHED or not isinstance(recorded, dict):
            return []
        problems = []
        for name, checksum in recorded.items():
            path = self.path / name
            if not path.is_file():
                problems.append((name, "missing"))
            elif file_checksum(path) != checksum:
                problems.append((name, "changed since the run finished"))
        return problems

    def verify(self) -> None:
        """BenchError naming the first damaged file of a finished run."""
        problems = self.damaged()
        if problems:
            (name, why), more = problems[0], f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
            raise BenchError(f"{self.path / name} is damaged: {why}{more}; `bench compare ... --resume --repair` "
                             "retrains the run")

    def copy_to(self, to: Path) -> None:
        """Copy the finished, verified run (its files and a status with their checksums) into folder `to`."""
        self.verify()
        for path in _recorded_files(self.path):
            with atomic_path(to / path.relative_to(self.path)) as tmp:
                shutil.copyfile(path, tmp)
        RunDir(to).set_status(**(self.status() or {}))

    def write_curve(self, rows: list[dict[str, Any]]) -> None:
        write_csv(self.path / "curve.csv", rows)

    def write_phases(self, rows: list[dict[str, Any]]) -> None:
        write_csv(self.path / "phases.csv", rows)

    def save_model(self, model, tokenizer=None) -> None:
        """The final weights as a transformers checkpoint (safetensors)."""
        with atomic_dir(self.path / "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
