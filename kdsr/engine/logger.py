"""Run logs: ``metrics.jsonl`` (one JSON object per record) and TensorBoard events."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("kdsr")


class RunLogger:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, kind: str, stage: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "stage": stage, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in _flatten(values).items():
            if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
                self._tb.add_scalar(f"{stage}/{kind}/{key}", value, step)

    def images(self, stage: str, step: int, images: dict[str, Any]) -> None:
        """3xHxW tensors in [0, 1] to TensorBoard as ``<stage>/sr/<name>`` (SR crops at each eval)."""
        if not self.enabled:
            return
        for name, image in images.items():
            self._tb.add_image(f"{stage}/sr/{name}", image.clamp(0, 1), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
