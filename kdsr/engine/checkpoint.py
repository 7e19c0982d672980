"""Training checkpoints: weights as safetensors, the rest of the state for an exact resume.

A checkpoint is two files (``step-N.safetensors`` with every trained tensor, ``step-N.state.pt``
with optimiser, scheduler and RNG state) made current by atomically rewriting ``latest.json``.
A crash, a full disk or a file-size limit at any point leaves the previous checkpoint intact:
each file is serialised in memory and written atomically (:func:`kdsr.files.write_atomic`), and a
checkpoint that could not be written completely is removed again.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsr.errors import KdsrError
from kdsr.files import write_atomic
from kdsr.rundir import restore
from kdsr.weights import read_state_dict, save_weights

__all__ = ["collect", "restore", "write_atomic", "save", "latest", "latest_weights", "first_nonfinite", "rng_state", "set_rng_state"]


def collect(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat dict of every module's state, keys prefixed by the module's name."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            out[f"{prefix}.{k}"] = v
    return out


def save(folder: Path, step: int, modules: dict[str, nn.Module], state: dict[str, Any], keep: int = 1) -> None:
    """Write the checkpoint of ``step`` and make it the latest; older ones beyond ``keep`` are removed.

    Only once both files are complete does ``latest.json`` point at them; if writing fails (a full
    disk: one-line :class:`KdsrError`) the new step's files are removed and the previous checkpoint
    stays the latest.
    """
    weights = folder / f"step-{step}.safetensors"
    extra = folder / f"step-{step}.state.pt"
    previous = _pointer(folder)
    kept = f"the checkpoint of step {previous['step']} is kept" if previous else "no checkpoint was written yet"
    advice = f"{kept}; continue with --resume once the disk has room"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        save_weights(collect(modules), weights, metadata={"step": str(step)}, advice=advice)
        write_atomic(extra, buffer.getvalue(), advice)
        write_atomic(folder / "latest.json", json.dumps({"step": step, "weights": weights.name, "state": extra.name}).encode(), advice)
    except KdsrError:
        if previous is None or previous["step"] != step:
            weights.unlink(missing_ok=True)
            extra.unlink(missing_ok=True)
        raise
    steps = {int(p.name.split("-")[1].split(".")[0]) for p in folder.glob("step-*.safetensors")}
    older = sorted(n for n in steps if n < step)
    stale = [n for n in steps if n > step]  # left by a run killed mid-checkpoint, before it was resumed
    for n in older[: max(len(older) - keep + 1, 0)] + stale:
        (folder / f"step-{n}.safetensors").unlink(missing_ok=True)
        (folder / f"step-{n}.state.pt").unlink(missing_ok=True)


def _pointer(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / "latest.json").read_text())
        return info if isinstance(info, dict) and "step" in info else None
    except (OSError, ValueError):
        return None


def latest_weights(folder: Path) -> tuple[int, Path] | None:
    """(step, weights file) of the checkpoint ``latest.json`` points at, if that file exists."""
    info = _pointer(folder)
    if info is None or not (folder / str(info.get("weights"))).is_file():
        return None
    return int(info["step"]), folder / info["weights"]


def first_nonfinite(named: Iterable[tuple[str, Any]]) -> str | None:
    """Name of the first floating-point tensor holding NaN or inf, or None (a checkpoint must not)."""
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def latest(folder: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """(step, weights, state) of the newest complete checkpoint in ``folder``, or None."""
    pointer = folder / "latest.json"
    if not pointer.exists():
        return None
    try:
        info = json.loads(pointer.read_text())
        weights = read_state_dict(folder / info["weights"])
        state = torch.load(folder / info["state"], map_location="cpu", weights_only=True)
    except (OSError, KeyError, ValueError, pickle.UnpicklingError, RuntimeError) as exc:
        raise KdsrError(f"checkpoint in '{folder}' is unreadable ({type(exc).__name__}: {exc}); remove it to restart the stage") from None
    return int(info["step"]), weights, state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
