"""One writer per run: advisory locks on files inside the run directory.

A lock is `fcntl.flock` on a hidden file (`.compare.lock` for the comparison's shared setup,
`runs/<run>/.lock` for one run), which also holds the holder's host and pid for messages. The kernel
drops a flock when its holder dies, kill -9 included, so a lock is never stale; on a network file
system Linux maps flock to POSIX locks through the NFS lock manager, so jobs on several nodes that
share one run directory exclude each other too. The files stay behind (tiny) — deleting a lock file
while another process waits on it would let two holders in.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from bench.errors import BenchError

COMPARE_LOCK = ".compare.lock"
RUN_LOCK = ".lock"


class Lock:
    """An exclusive lock on `path`: `try_acquire` / `acquire` / `release`, or `with Lock(path):`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds (or last held) the lock, in words."""
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "another process"
        return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('since', '?')})"

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False when another process holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "since": datetime.now(UTC).isoformat(timespec="seconds")}).encode(), 0)
        return True

    def held(self) -> bool:
        """Whether another process holds the lock now."""
        if not self.try_acquire():
            return True
        self.release()
        return False

    def acquire(self, timeout: float | None = None, waiting: Callable[[str], None] | None = None) -> None:
        """Wait for the lock (at most `timeout` seconds: then BenchError); `waiting` hears once who holds it."""
        started = time.monotonic()
        told = False
        while not self.try_acquire():
            if not told and waiting is not None:
                waiting(self.holder())
                told = True
            if timeout is not None and time.monotonic() - started > timeout:
                raise BenchError(f"{self.path.parent} is locked by {self.holder()}; gave up after {timeout:.0f} s")
            time.sleep(0.2)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
