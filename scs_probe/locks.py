"""Advisory locks on a file (fcntl.flock): one process at a time trains a run directory or writes a directory's
analyses. The OS drops a lock when its process ends, SIGKILL included, so a lock file left behind never blocks
anybody; while held, the file names its holder (pid, host, since) for the message of whoever is refused."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

RETRY_SECONDS = 1.0  # `holder` takes a shared lock for an instant: an acquirer that meets it tries again
# a crafted lock file is never followed (a symlink would have its target truncated and written) nor waited on
# (opening a FIFO to read waits for a writer)
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK


class FileLock:
    """An exclusive lock on `path` (created where missing), held from `acquire` until `release` or the
    process' end."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, wait: float = RETRY_SECONDS) -> bool:
        """Take the lock; False where another process holds it (after `wait` seconds of trying). An OSError
        where the file system cannot lock at all."""
        if self.fd is not None:
            return True
        deadline = time.monotonic() + wait
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
                continue
            except OSError:
                os.close(fd)
                raise
            try:  # somebody removed the file between our open and our lock: lock the one there now
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is None or not os.path.samestat(os.fstat(fd), current):
                os.close(fd)
                continue
            self.fd = fd
            self._record()
            return True

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | _SAFE, 0o666)
        except PermissionError as e:  # another user's lock file on shared storage: lockable, not writable
            try:
                return os.open(self.path, os.O_RDONLY | _SAFE)
            except FileNotFoundError:  # none to lock: the folder is what cannot be written
                raise e from None

    def _record(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(info).encode(), 0)
        except OSError:  # read-only: the lock holds all the same, unnamed
            pass

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would let two processes lock two files of one name)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        os.close(fd)

    def __del__(self):
        try:
            self.release()
        except Exception:  # at interpreter exit: the OS drops the lock anyway
            pass


def _plain(info) -> dict:
    """What a lock file records of its holder, as far as it is plain: a pid (a positive int), a host and a since
    (printable text, no longer than a host name may be); anything else, written by another hand, is dropped (it
    reaches messages and the terminal)."""
    if not isinstance(info, dict):
        return {}
    out = {}
    pid = info.get("pid")
    if isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**63:
        out["pid"] = pid
    for key in ("host", "since"):
        text = info.get(key)
        if isinstance(text, str) and 0 < len(text) <= 255 and text.isprintable():
            out[key] = text
    return out


def holder(path) -> dict | None:
    """Who holds the lock on `path`: {'pid', 'host', 'since'} as its holder recorded them ({} where unreadable);
    None where nobody does. It takes a shared lock for an instant to tell (see `RETRY_SECONDS`)."""
    try:
        fd = os.open(path, os.O_RDONLY | _SAFE)
    except OSError:  # no lock file (or a symlink, not followed): never locked
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (OSError, ValueError):
                info = {}
            return _plain(info)
        except OSError:  # a file system without locks: nobody can hold one
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


