"""Run logs: ``metrics.jsonl`` (one JSON object per record) and TensorBoard events.

A full disk or a file-size limit while logging stops the run with a one-line :class:`KdsrError` naming
the file and the fix (:func:`kdsr.files.write_failure`, as for checkpoints); the last checkpoint is
kept for ``--resume``, which also drops a record the failure cut short. TensorBoard writes on a thread
of its own, so its failure surfaces at the next record (or at :meth:`RunLogger.close`); that thread's
own traceback is silenced, the error is reported here instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kdsr.errors import KdsrError
from kdsr.files import write_failure
from kdsr.rundir import METRICS

log = logging.getLogger("kdsr")

KEPT = "the last checkpoint is kept; continue with --resume once the disk has room"


class RunLogger:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS
        self.tb_dir = run_dir / "tensorboard"
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_threads()
            with self._tensorboard():
                self._tb = SummaryWriter(log_dir=str(self.tb_dir))

    def write(self, kind: str, stage: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "stage": stage, "step": step, "time": round(time.time(), 3), **values}
        line = json.dumps(record) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            raise KdsrError(f"{write_failure(self.path, len(line.encode()), exc)}; {KEPT}") from None
        with self._tensorboard():
            for key, value in _flatten(values).items():
                if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
                    self._tb.add_scalar(f"{stage}/{kind}/{key}", value, step)

    def images(self, stage: str, step: int, images: dict[str, Any]) -> None:
        """3xHxW tensors in [0, 1] to TensorBoard as ``<stage>/sr/<name>`` (SR crops at each eval)."""
        if not self.enabled:
            return
        with self._tensorboard():
            for name, image in images.items():
                self._tb.add_image(f"{stage}/sr/{name}", image.clamp(0, 1), step)

    def close(self, quiet: bool = False) -> None:
        """Flush and close TensorBoard; a second call does nothing. ``quiet``: a failing write is not
        reported (the run is already stopping with an error of its own)."""
        tb, self._tb = self._tb, None
        if tb is None:
            return
        try:
            with self._tensorboard():
                tb.close()
        except KdsrError:
            if not quiet:
                raise

    @contextlib.contextmanager
    def _tensorboard(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise KdsrError(f"{write_failure(self.tb_dir, None, exc)}; {KEPT}") from None


def _quiet_tensorboard_threads() -> None:
    """TensorBoard's writer thread re-raises a failed write, which Python prints as a traceback; the
    thread that logs reports it (above), so drop just those."""
    previous = threading.excepthook
    if getattr(previous, "kdsr_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (issubclass(args.exc_type, OSError) and type(args.thread).__module__.startswith("tensorboard.")):
            previous(args)

    hook.kdsr_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
