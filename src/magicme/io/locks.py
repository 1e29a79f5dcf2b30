"""One writer per output: a second magicme process aimed at the same run folder or video is
refused at once, instead of two processes interleaving checkpoints or racing to one file.

The lock is an OS file lock (`flock`) on a hidden file beside the target, so it is released
when its process ends in any way, `kill -9` included: a crash never leaves a stale lock (at
most an unlocked file, which the next writer takes over and removes).
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class BusyError(ValueError):
    """Another process is writing the same output."""


@contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the lock of `target` (a folder or a file) while the block runs, or refuse if another process has it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    handle = _acquire(lock, target)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: a waiting process then finds the file gone and retries
        os.close(handle)


def _acquire(lock: Path, target: Path) -> int:
    while True:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            raise BusyError(
                f"{target} is being written by another magicme process (pid {owner}); wait for it to finish, "
                "or write somewhere else"
            ) from None
        if lock.exists() and lock.stat().st_ino == os.fstat(handle).st_ino:
            os.ftruncate(handle, 0)
            os.pwrite(handle, str(os.getpid()).encode(), 0)
            return handle
        os.close(handle)  # its last holder removed that file as we locked it: lock the current one
