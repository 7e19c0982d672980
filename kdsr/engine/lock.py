"""One process per run directory: an exclusive ``fcntl.flock`` on ``<run_dir>/.kdsr.lock``.

Two ``kdsr run`` (or a run and a ``--resume``) writing one directory would interleave checkpoints
and logs; the second is refused with the holder's pid instead. The kernel drops the lock when the
holder exits, however it exits (even SIGKILL), so a stale lock file never blocks a rerun.
Local filesystems only: ``flock`` on NFS may not exclude processes on other machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from kdsr.errors import KdsrError

LOCK_NAME = ".kdsr.lock"


class RunLock:
    """Context manager holding the lock of ``run_dir`` (created if missing) until exit.

    The lock file exists only while held: it is removed on release, and a directory the lock
    created that is still empty is removed too, so a refused run leaves no trace.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False

    def __enter__(self) -> RunLock:
        try:
            self._created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KdsrError(f"cannot create the run directory '{self.run_dir}' ({exc.strerror}); choose another out_dir") from None
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise KdsrError(f"cannot write in the run directory '{self.run_dir}' ({exc.strerror}); choose another out_dir") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                self._remove_created_dir()
                raise KdsrError(
                    f"run directory '{self.run_dir}' is in use by another kdsr process (pid {holder}); "
                    f"wait for it to finish (or stop it), or set name=... / out_dir=... for a new run"
                ) from None
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # the previous holder removed the file between our open and flock: lock the new one
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file (still holding the lock, so nobody else holds it meanwhile), then unlock."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        self._remove_created_dir()
        os.close(self._fd)
        self._fd = None

    def _remove_created_dir(self) -> None:
        if self._created_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote something, keep it
                self.run_dir.rmdir()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
