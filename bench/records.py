"""The run directory: the contract between training and reporting. Every write is atomic.

RUN_DIR/
  manifest.json                 what was run, on what, with which prices
  runs/<method>-s<seed>/        curve.csv, phases.csv, status.json, model/
  parent/                       the parent's own curve.csv, phases.csv, status.json
"""

from __future__ import annotations

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


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
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
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_name(method: str, seed: int) -> str:
    return f"{method.replace(':', '_')}-s{seed}"


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
        write_json(self.status_path, {"state": state, **fields})

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
