"""Writing a file all-or-nothing: a crash, a full disk or a file-size limit never leaves a
half-written file, a stray temporary file, or a traceback.

Callers serialise to bytes first (``safetensors.torch.save``, ``torch.save`` into a buffer), so the
only way writing can fail is an ``OSError``, which becomes a one-line :class:`KdsrError` naming the
file and the space it needs.
"""

from __future__ import annotations

import errno
import os
import resource
import secrets
import shutil
from pathlib import Path

from kdsr.errors import KdsrError


def write_atomic(path: Path, data: bytes, advice: str = "") -> None:
    """Replace ``path`` by ``data`` atomically: a uniquely named temporary file in the same folder,
    fsynced, then renamed over ``path``. On failure the temporary file is removed and the previous
    ``path`` (if any) is left untouched; ``advice`` ends the error message (what is kept, what to do)."""
    path = Path(path)
    fd, tmp = -1, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))  # unique: writers never collide
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as f:
            fd = -1  # owned (and closed) by f from here on
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise KdsrError(write_failure(path, len(data), exc) + (f"; {advice}" if advice else "")) from None
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_failure(path: Path, size: int | None, exc: OSError) -> str:
    """Why writing ``size`` bytes (``None``: an amount not known, as for TensorBoard's own writes) to
    ``path`` failed, with the room it needs."""
    need = [f"it needs {_fmt(size)}"] if size is not None else []
    if exc.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        facts = need + ([] if limit == resource.RLIM_INFINITY else [f"the limit allows {_fmt(limit)}"])
        detail = f" ({', '.join(facts)})" if facts else ""
        return f"could not write '{path}': file-size limit reached{detail}; raise the limit (ulimit -f)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = _fmt(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        room = f"at least {_fmt(size)}" if size is not None else "some space"
        return f"could not write '{path}': no space left on its disk ({', '.join([*need, f'{free} free'])}); free {room} there"
    return f"could not write '{path}' ({exc.strerror or exc}); check that the folder exists and is writable"


def _fmt(n: float) -> str:
    units, i = ("B", "KB", "MB", "GB", "TB"), 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}" if i else f"{int(n)} B"
