"""Training checkpoints: weights as safetensors, the rest of the state for an exact resume.

A checkpoint is two files (``step-N.safetensors`` with every trained tensor, ``step-N.state.pt``
with optimiser, scheduler and RNG state) made current by atomically rewriting ``latest.json``.
A crash at any point leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsr.errors import KdsrError
from kdsr.weights import read_state_dict, save_weights


def collect(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat dict of every module's state, keys prefixed by the module's name."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            out[f"{prefix}.{k}"] = v
    return out


def restore(modules: dict[str, nn.Module], state: dict[str, torch.Tensor], source: str) -> None:
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


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(folder: Path, step: int, modules: dict[str, nn.Module], state: dict[str, Any], keep: int = 1) -> None:
    """Write the checkpoint of ``step`` and make it the latest; older ones beyond ``keep`` are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"step-{step}.safetensors"
    extra = folder / f"step-{step}.state.pt"
    save_weights(collect(modules), weights, metadata={"step": str(step)})
    tmp = extra.with_name(extra.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, extra)
    write_atomic(folder / "latest.json", json.dumps({"step": step, "weights": weights.name, "state": extra.name}).encode())
    steps = sorted(int(p.name.split("-")[1].split(".")[0]) for p in folder.glob("step-*.safetensors"))
    for n in steps[:-keep]:
        (folder / f"step-{n}.safetensors").unlink(missing_ok=True)
        (folder / f"step-{n}.state.pt").unlink(missing_ok=True)


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
