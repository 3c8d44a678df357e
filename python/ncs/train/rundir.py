"""An OS lock on a run directory: one `ncs train` (or `ncs demo`) per --out at a time.

    with lock_run_dir(out):   # RunError naming the holder's pid if another process has it
        ...

fcntl.flock on <out>/.lock (the pid of the holder is written in it). The OS drops the lock
when the holder exits in any way (kill -9 included), so a lock file left by a dead process is
stale by construction: the next run takes it over (and says so when the recorded pid is gone)
and deletes the temporary files of the writes the dead run left half done.
Where fcntl is missing (Windows), an O_EXCL lock file with the pid stands in; a file whose
pid no longer runs is stale and replaced.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional

LOCK_NAME = ".lock"


class RunError(RuntimeError):
    """A run directory problem the user must fix (exists without --resume, config mismatch...)."""


class RunDirLocked(RuntimeError):
    pass


DEBRIS_DIRS = (".", "checkpoints", "models", "figures")


def remove_debris(out: str) -> int:
    """Delete the temporary files of writes that a killed run left half done (.tmp-*, *.tmp,
    *.partial) in the run directory; safe only while holding its lock. Returns the count."""
    n = 0
    for sub in DEBRIS_DIRS:
        d = os.path.join(out, sub)
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(".tmp") or name.endswith((".tmp", ".partial")):
                try:
                    os.unlink(os.path.join(d, name))
                    n += 1
                except OSError:
                    pass
    return n


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _read_pid(path: str) -> Optional[int]:
    try:
        with open(path, "r", encoding="ascii", errors="replace") as f:
            return int(f.read().strip() or "x")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def lock_run_dir(out: str, log: Optional[Callable[[str], None]] = None,
                 error: type = RunDirLocked) -> Iterator[str]:
    """Hold the lock of run directory ``out`` (created if needed) for the with-block."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_NAME)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        fcntl = None
    if fcntl is None:  # pragma: no cover
        yield from _lock_exclusive_file(path, out, log, error)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(path)
            who = f"pid {pid}" if pid is not None else "another process"
            raise error(f"{out} is in use by another ncs run ({who} holds {path}); wait for it to "
                        f"finish or choose another --out") from None
        old = _read_pid(path)
        if old is not None and old != os.getpid() and log is not None:
            log(f"{out}: taking over the stale lock of pid {old}, which "
                f"{'still runs but does not hold it' if _pid_alive(old) else 'is no longer running'}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_debris(out)
        try:
            yield path
        finally:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_exclusive_file(path, out, log, error):  # pragma: no cover - Windows fallback
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            pid = _read_pid(path)
            if pid is not None and _pid_alive(pid):
                raise error(f"{out} is in use by another ncs run (pid {pid} holds {path}); wait for it "
                            f"to finish or choose another --out") from None
            if log is not None:
                log(f"{out}: removing the stale lock of pid {pid}, which is no longer running")
            os.unlink(path)
    else:
        raise error(f"{out}: cannot take the lock {path}")
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
