"""Advisory file locks (``fcntl.flock``) that serialise work across threads and processes.

Input: a lock file path. Output: a context manager holding an exclusive lock on it. Locks are
released by the kernel when the holder dies (even by SIGKILL), so a killed batch never leaves a
capture locked. Two threads of one process exclude each other too (each opens its own descriptor).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def file_lock(path: Path, *, wait: bool = True, timeout_s: float | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` for the block; yields True when held. With ``wait=False``
    (or once ``timeout_s`` passes) it yields False instead of waiting."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if not wait or (timeout_s is not None and time.monotonic() - start > timeout_s):
                    break
                time.sleep(0.05)
        yield held
    finally:
        if held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
