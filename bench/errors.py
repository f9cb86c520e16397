"""The exceptions that mean something to the command line, and the exit code of any error (see bench/cli.py).

Exit codes: 0 ok; 1 a check found a regression, or some runs failed after the others finished (RunsFailed);
2 bad input, or an output location that cannot be used (a read-only folder, a file where a folder belongs,
permission denied); 3 an environment fault: the machine cannot go on (disk full, quota exceeded, out of
memory, an I/O error), and the same command with --resume continues; 4 an internal error (a bug in growbench);
130 interrupted (SIGINT); 128 + the signal's number when stopped by SIGHUP (129), SIGUSR1 (138) or SIGTERM (143),
after a checkpoint where a run was training (bench/stopping.py).
"""

from __future__ import annotations

import errno
import signal

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


EXIT_SIGNAL_BASE = 128
"""A command stopped by signal N exits EXIT_SIGNAL_BASE + N, as a shell reports a process the signal killed."""


class Stopped(BaseException):
    """A stop signal (SIGTERM, SIGHUP, SIGUSR1) ended the command (exit 128 + its number). A BaseException, as
    KeyboardInterrupt is: a caller that keeps going after a failed run must not keep going after this.

    `where` says where a training stopped ("" when it stopped at once); `curve` holds that run's eval points so far."""

    def __init__(self, number: int, where: str = "", curve: list[dict] | None = None):
        super().__init__(number, where)
        self.number, self.where, self.curve = number, where, curve

    @property
    def name(self) -> str:
        return signal.Signals(self.number).name

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL_BASE + self.number


class BenchError(Exception):
    """Bad input: unknown size or method, a shrinking pair, a missing corpus, a budget too small (exit 2)."""


class RunsFailed(Exception):
    """Some runs of a comparison failed after the others finished (exit 1)."""


class EnvironmentFault(Exception):
    """The machine cannot go on: disk full, quota exceeded, out of memory (exit 3). Nothing about the input
    is wrong, so the same command continues (`--resume`) once the fault is fixed."""


# An output location that cannot be used, or a path that names the wrong kind of thing: the user's to change.
UNUSABLE_PATH = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                           errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTEMPTY})
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# Libraries that write through their own code report a full disk in words, not as an OSError (safetensors'
# Rust IoError, torch's stream writer).
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull", "QuotaExceeded",
                    "FilesystemQuotaExceeded")


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a full disk or an exceeded quota."""
    return any((isinstance(link, OSError) and link.errno in DISK_FULL)
               or any(words in str(link) for words in _DISK_FULL_WORDS) for link in _chain(error))


def is_out_of_memory(error: BaseException) -> bool:
    return any(isinstance(link, MemoryError) or type(link).__name__ == "OutOfMemoryError" for link in _chain(error))


_LOST_PEER_TYPES = ("DistBackendError", "DistNetworkError", "DistStoreError")
_LOST_PEER_WORDS = ("Connection closed by peer", "Connection reset by peer")


def is_lost_peer(error: BaseException) -> bool:
    """Whether `error` is a torchrun collective failing because another rank went away (it crashed, was killed, or
    stopped on an error of its own)."""
    return any(type(link).__name__ in _LOST_PEER_TYPES or any(words in str(link) for words in _LOST_PEER_WORDS)
               for link in _chain(error))


def is_environment_fault(error: BaseException) -> bool:
    """A fault of the machine or of the output location, not of one run: a caller that keeps going after a failed
    run (compare) should re-raise these, since every later run would fail the same way (a full disk, a folder that
    became read-only). Running out of memory is not one: another method may fit."""
    return isinstance(error, EnvironmentFault) or is_disk_full(error) or is_lost_peer(error) or (
        isinstance(error, OSError) and not isinstance(error, BrokenPipeError))


def _path_words(error: OSError) -> str:
    """The path an OSError names; an atomic write's temporary sibling (`.<name>.<random>`) is named by its folder."""
    from pathlib import Path

    if not error.filename:
        return ""
    path = Path(str(error.filename))
    return f"{path.parent}/" if path.name.startswith(".") and path.name.count(".") >= 2 else str(path)


def exit_code_and_message(error: BaseException) -> tuple[int, str]:
    """The exit code of an error that reached the command line, and what to say about it (one line, except
    RunsFailed's list of runs)."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(error, Stopped):
        return error.exit_code, f"stopped by {error.name}" + (f" {error.where}" if error.where else "")
    if isinstance(error, BenchError):
        return EXIT_BAD_INPUT, " ".join(str(error).split("\n"))
    if isinstance(error, RunsFailed):
        return EXIT_CHECK_FAILED, str(error)
    if isinstance(error, EnvironmentFault):
        return EXIT_ENVIRONMENT, " ".join(str(error).split("\n"))
    if is_disk_full(error):
        where = next((_path_words(link) for link in _chain(error) if isinstance(link, OSError) and link.filename), "")
        return EXIT_ENVIRONMENT, "no space left on the device (or quota exceeded)" + (f": {where}" if where else "")
    if is_lost_peer(error):
        return EXIT_ENVIRONMENT, (f"another torchrun process left the run (its own error is reported first): "
                                  f"{_first_line(error)}")
    if is_out_of_memory(error):
        return EXIT_ENVIRONMENT, f"out of memory ({_first_line(error)}): use a smaller pair, batch or another device"
    if isinstance(error, OSError):
        where = _path_words(error)
        what = error.strerror or _first_line(error)
        if error.errno in UNUSABLE_PATH:
            return EXIT_BAD_INPUT, f"cannot use {where or 'a path'}: {what}"
        return EXIT_ENVIRONMENT, f"{what}{f': {where}' if where else ''}"
    return EXIT_INTERNAL, (f"internal error ({type(error).__name__}: {_first_line(error)}); this is a bug in "
                           "growbench: `bench --debug ...` shows the traceback")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
