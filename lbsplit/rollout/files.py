"""Atomic file replacement and the state lock.

Every file lbsplit replaces (lbsplit.conf, state.json, the journal, the watchdog's
state and textfile) goes through `atomic_write`; the two append-only logs (history,
watchdog.log) are appended by their owners, `state` and `watch.watchdog`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import tempfile
import time
from pathlib import Path

from .. import progress
from ..errors import EnvironmentProblem, LockBusy

TEMP_PREFIX = ".lbsplit-tmp-"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_problem(action: str, path: Path, e: OSError) -> EnvironmentProblem:
    hint = {
        errno.EACCES: "run as a user that may write there (often root), or change the path in the config",
        errno.EPERM: "run as a user that may write there (often root), or change the path in the config",
        errno.ENOSPC: "free some disk space",
        errno.EROFS: "the file system is read-only",
        errno.ENOENT: "create the directory or fix the path in the config",
    }.get(e.errno, "check the path and its permissions")
    return EnvironmentProblem(f"cannot {action} {path}: {e.strerror}; {hint}")


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that readers see the old or the new bytes, never a mix.

    Temp file in the same directory, fsync, rename over the target, fsync the
    directory (the rename itself must survive a power cut).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise os_problem("write", path, e) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def link_or_copy(source: Path, target: Path) -> bool:
    """Make `target` a hard link to `source` (replacing it); False when that is not possible."""
    tmp = target.with_name(TEMP_PREFIX + target.name)
    try:
        if target.exists() and os.path.samefile(source, target):
            return True  # rename() over another link to the same file would do nothing and leave tmp behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.link(source, tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files a killed lbsplit left behind (call only under the lock); returns how many."""
    count = 0
    try:
        stale = list(Path(directory).glob(TEMP_PREFIX + "*"))
    except OSError:
        return 0
    for path in stale:
        try:
            os.unlink(path)
            count += 1
        except OSError:
            pass
    return count


def remove(path: Path) -> None:
    """Remove `path` if present and make the removal durable."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise os_problem("remove", path, e) from None
    _fsync_dir(path.parent)


def read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_problem("read", path, e) from None


def ensure_dir(path: Path, mode: int = 0o755) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as e:
        raise os_problem("create", path, e) from None


def _is_lbsplit(pid: int) -> bool:
    """Is `pid` an lbsplit command (so that ending it runs lbsplit's own undo)? Read from /proc."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"lbsplit" in arg for arg in argv[:4])


def yields_to_revert(holder: str) -> bool:
    """May a person's revert end this holder of the lock ("pid N (purpose)")?

    Not another revert, which does what ours would, and so not the watchdog either: its check is short and
    its revert is ours (its step back to a lower percent and its auto-promote rename the lock, and yield).
    Not a fleet agent's change: ending it would stop the agent. A holder we cannot name is waited for.
    """
    if not holder.startswith("pid ") or "(" not in holder:
        return False
    purpose = holder.partition("(")[2].rpartition(")")[0]
    return not (purpose.startswith(("revert", "fleet ")) or purpose in ("watchdog", "watchdog revert"))


class Lock:
    """An exclusive flock on state_dir/lock, waited for up to `timeout` seconds.

    flock belongs to the open file: the kernel drops it when the holder dies, so a
    killed lbsplit never leaves a stale lock behind.
    """

    PREEMPT_AFTER = 0.3  # seconds a preempting lock (revert) waits before it ends the holder
    GRACE = 0.8  # seconds the holder has after SIGTERM (its undo runs), and again after SIGKILL

    def __init__(self, path: Path, timeout: float, purpose: str, preempt: bool = False):
        self.path = Path(path)
        self.timeout = timeout
        self.purpose = purpose
        self.preempt = preempt  # a person's revert: end a holder that is not itself a revert
        self.preempted: str | None = None  # whom it ended, for the command's output
        self._fd: int | None = None

    def holder_pid(self) -> int | None:
        """The holder's pid, from what it wrote into the lock file ("pid N (purpose)")."""
        words = self.holder().split()
        return int(words[1]) if len(words) > 1 and words[0] == "pid" and words[1].isdigit() else None

    def _end_holder(self, fd: int) -> bool:
        """SIGTERM, then SIGKILL, the lbsplit process holding the lock (its transaction is crash-safe at every
        step: the undo runs on SIGTERM, repair from the journal after SIGKILL). True once the lock is ours."""
        holder, pid = self.holder(), self.holder_pid()
        if pid is None or pid == os.getpid() or not yields_to_revert(holder) or not _is_lbsplit(pid):
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                return False
            ended = f"{holder}, ended by {signal.Signals(sig).name}"
            deadline = time.monotonic() + self.GRACE
            while time.monotonic() < deadline:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.preempted = ", ".join(filter(None, [self.preempted, ended]))
                    return True
                except BlockingIOError:
                    if self.holder_pid() not in (pid, None):  # ended, and a waiting command took the lock
                        self.preempted = ", ".join(filter(None, [self.preempted, ended]))
                        return False
                    time.sleep(0.02)
        return False

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip() or "another lbsplit command"
        except OSError:
            return "another lbsplit command"

    def acquire(self) -> "Lock":
        try:
            # O_NOFOLLOW: a `lock` symlink planted in state_dir must never make us truncate its target.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise EnvironmentProblem(f"lock {self.path} is a symbolic link; remove it (lbsplit creates its own)") from None
            raise os_problem("open the lock", self.path, e) from None
        started = time.monotonic()
        deadline = started + self.timeout
        told = False
        next_preempt = started + self.PREEMPT_AFTER if self.preempt else float("inf")
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # Again for each new holder: a command that was waiting may take the lock the moment one ends.
                if time.monotonic() >= next_preempt:
                    ended_before = self.preempted
                    if self._end_holder(fd):
                        break
                    # a new holder is ended at once; one we may not end is waited for a while
                    next_preempt = time.monotonic() + (0 if self.preempted != ended_before else self.PREEMPT_AFTER)
                if not told and time.monotonic() - started > progress.AFTER:
                    progress.say(f"waiting for the lock held by {self.holder()} (up to {self.timeout:g}s)")
                    told = True
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockBusy(
                        f"lock {self.path} is held by {self.holder()}; waited {self.timeout:g}s. "
                        "Try again when it finishes (raise lock_timeout to wait longer)"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        self._write_holder()
        return self

    def _write_holder(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"pid {os.getpid()} ({self.purpose})\n".encode(), 0)
        except OSError:
            pass  # the holder's name is a courtesy; a full disk must not stop a revert from taking the lock

    def rename(self, purpose: str) -> None:
        """Say what the holder does now (a watchdog that steps back); only the holder calls it."""
        self.purpose = purpose
        if self._fd is not None:
            self._write_holder()

    def try_acquire(self) -> bool:
        """Take the lock only if it is free right now."""
        saved, self.timeout = self.timeout, 0
        try:
            self.acquire()
            return True
        except LockBusy:
            return False
        finally:
            self.timeout = saved

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
