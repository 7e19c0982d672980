"""The files of a run directory and how to read them back: the one home of their names and readers.

The engine writes a run (:mod:`kdsr.engine.run`, :mod:`kdsr.engine.logger`); loading (:mod:`kdsr.models`)
and the report read it. Both come here, and this module imports nothing of the engine, so imports
flow one way: verbs -> engine -> rundir.

A run directory holds ``config.resolved.yaml`` (the config the run was started with), ``progress.json``
(finished stages, their step counts and results), ``metrics.jsonl`` (one JSON log record per line) and
``checkpoints/<stage>/final.safetensors`` (each finished stage's trained weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsr.branches import Branch, unique_modules
from kdsr.errors import KdsrError
from kdsr.weights import read_state_dict

RESOLVED = "config.resolved.yaml"
PROGRESS = "progress.json"
METRICS = "metrics.jsonl"
REPORT = "report.json"


def final_weights_path(run_dir: Path, stage: str) -> Path:
    """Where a finished stage's trained weights are kept."""
    return Path(run_dir) / "checkpoints" / stage / "final.safetensors"


def read_progress(run_dir: Path) -> dict[str, Any]:
    """``progress.json``: ``done`` (finished stage names, in order), ``steps`` and ``results`` per stage;
    a run without one has finished nothing."""
    path = Path(run_dir) / PROGRESS
    if path.exists():
        return json.loads(path.read_text())
    return {"done": [], "results": {}}


def read_report(run_dir: Path) -> dict[str, Any] | None:
    """``report.json`` as the finished run wrote it; None when there is none or it cannot be read (it is
    only ever a shortcut: everything in it can be measured again)."""
    try:
        return json.loads((Path(run_dir) / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` in order; none for a run without one."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def restore(modules: dict[str, nn.Module], state: dict[str, torch.Tensor], source: str) -> None:
    """Load a flat state (keys prefixed by module name, as a checkpoint holds them) strictly into ``modules``;
    a mismatch is a one-line error naming ``source``."""
    for prefix, module in modules.items():
        own = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(own, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise KdsrError(
                f"checkpoint '{source}' does not match '{prefix}' of this run ({first}); "
                f"was the config changed since it was written?"
            ) from None


def load_final(run_dir: Path, stage: str, branches: dict[str, Branch]) -> None:
    """Load stage ``stage``'s final weights into its trained branches (as built from the run's config)."""
    path = final_weights_path(run_dir, stage)
    restore(unique_modules(branches, trainable=True), read_state_dict(path), str(path))
