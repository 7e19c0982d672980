"""Loading and saving network weights safely (safetensors, or ``torch.load(weights_only=True)``).

Checkpoints of reference implementations come wrapped in many ways (BasicSR/SwinIR ``params`` /
``params_ema``, ``state_dict``, ``model``, DDP's ``module.`` prefix); ``read_state_dict`` unwraps
them, and a backbone's ``load_official`` maps the reference key names onto kdsr's module.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors
from torch import nn

from kdsr.errors import KdsrError
from kdsr.files import write_atomic

# Where reference trainers keep the weights inside a checkpoint, in the order tried: BasicSR/SwinIR
# (``params_ema``/``params``), generic (``state_dict``, ``model``, ...), and CSD's trainer
# (``{'epoch', 'model_state_dict', 'optimizer_state_dict', 'best_psnr', 'best_psnr_epoch'}``,
# ``trainer/slim_contrast_trainer.py``: ``train``), whose keys carry DataParallel's ``module.``.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "network")


def read_state_dict(path: str | Path, prefer: str = "params_ema") -> dict[str, torch.Tensor]:
    """Tensors of a weight file, unwrapped; refuses pickles that would run code."""
    path = Path(path)
    if not path.is_file():
        raise KdsrError(f"weights file '{path}' does not exist; check the path")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise KdsrError(f"weights file '{path}' is not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise KdsrError(refused_pickle(path, str(exc))) from None
    except Exception as exc:
        raise KdsrError(f"weights file '{path}' could not be read as a torch checkpoint ({type(exc).__name__}: {exc})") from None
    return unwrap(obj, path, prefer)


def refused_pickle(path: Path, reason: str) -> str:
    """One line for a checkpoint that needs code to unpickle: what kdsr reads, and how to convert a trusted file.

    PyTorch's own message advises ``weights_only=False``, i.e. running the file's code; kdsr never does that
    for you. Only the name of the object the file would build is kept from it.
    """
    found = re.search(r"GLOBAL ([\w.]+)", reason)
    what = f" (it would build {found.group(1)})" if found else ""
    out = path.with_suffix(".safetensors")
    snippet = (
        f"python -c \"import torch; from safetensors.torch import save_file; s = torch.load('{path}', weights_only=False); "
        f"s = s.get('params_ema') or s.get('params') or s.get('state_dict') or s; "
        f"save_file({{k: v.contiguous() for k, v in s.items() if torch.is_tensor(v)}}, '{out}')\""
    )
    return (
        f"weights file '{path}' holds pickled objects that need code to load{what}, which kdsr refuses; kdsr reads "
        f"safetensors or a plain state dict of tensors (torch.save(model.state_dict(), ...)); "
        f"only if you trust the file, convert it: {snippet}"
    )


def unwrap(obj: object, path: str | Path = "<memory>", prefer: str = "params_ema") -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object (a wrapper key of ``WRAPPER_KEYS``, then the
    tensors themselves), dropping DataParallel's ``module.`` prefix when every key has it."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise KdsrError(f"weights file '{path}' holds a {type(obj).__name__}, not a state dict")
    keys = [prefer, *[k for k in WRAPPER_KEYS if k != prefer]]
    for key in keys:
        if key in obj and isinstance(obj[key], Mapping):
            return unwrap(obj[key], path, prefer)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise KdsrError(f"weights file '{path}' has no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_weights(
    model: nn.Module,
    path: str | Path,
    convert: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    strict: bool = True,
    check_only: bool = False,
) -> None:
    """Load ``path`` into ``model``; a mismatch is a one-line error naming keys and the likely cause.

    ``check_only`` reads and checks the file without copying it into the model.
    """
    state = read_state_dict(path)
    if not _matches(model, state):
        state = strip_run_prefix(state, set(model.state_dict()))
    if convert is not None and not _matches(model, state):
        try:
            state = convert(model, state)
        except KdsrError as exc:
            raise KdsrError(f"{exc} (file '{path}')") from None
    check_compatible(model, state, str(path), strict)
    if not check_only:
        model.load_state_dict(state, strict=strict)


def strip_run_prefix(state: dict[str, torch.Tensor], expected: set[str] | None = None) -> dict[str, torch.Tensor]:
    """A run's ``checkpoints/<stage>/final.safetensors`` prefixes every key with the branch's module name
    (``student.body.0...``); drop that prefix so the file loads as plain network weights.

    A branch name may hold dots (a CSSR-Net's ``w1.0.head.0.weight``), so the prefix is found against
    ``expected`` (the model's keys): the shortest key prefix under which the file holds exactly the
    expected keys (which also takes a network out of a file holding more: an HKDSR student's
    ``student.backbone.*`` next to its ``student.heads.*`` loads as the plain backbone), else the shortest
    prefix shared by every key whose stripped keys are all expected (a non-strict load). Without
    ``expected`` the one shared first key component is dropped. A file that fits neither is returned as is.
    """
    if expected is None:
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) != 1 or not all("." in k for k in state):
            return state
        return {k.split(".", 1)[1]: v for k, v in state.items()}
    counts: dict[str, int] = {}
    for key in state:
        for prefix in _prefixes(key):
            counts[prefix] = counts.get(prefix, 0) + 1
    for prefix in sorted(counts, key=len):
        if counts[prefix] == len(expected):
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(sub) == expected:
                return sub
    for prefix in sorted((p for p, n in counts.items() if n == len(state)), key=len):
        stripped = {k[len(prefix):]: v for k, v in state.items()}
        if set(stripped) <= expected:
            return stripped
    return state


def _prefixes(key: str) -> list[str]:
    """``a.b.c`` -> ``a.``, ``a.b.``: the dotted prefixes that leave a non-empty key."""
    parts = key.split(".")
    return [".".join(parts[:i]) + "." for i in range(1, len(parts))]


def _matches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    return set(state) == set(model.state_dict())


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, strict: bool = True) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if shapes:
        cause = _likely_cause([s.split(" ")[0] for s in shapes])
        raise KdsrError(
            f"weights '{source}' do not fit {type(model).__name__}: shape mismatch at {_few(shapes)}; {cause}"
        )
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        cause = _likely_cause(missing + unexpected) if _is_upsampler(missing + unexpected) else (
            "likely another architecture or variant (check backbone and its options)"
        )
        raise KdsrError(f"weights '{source}' do not fit {type(model).__name__}: {'; '.join(parts)}; {cause}")


UPSAMPLER_WORDS = ("upsampl", "tail", "upconv", "conv_up")


def _is_upsampler(keys: list[str]) -> bool:
    """Only upsampler keys differ: the hallmark of a checkpoint for another scale (a width change touches every layer)."""
    return bool(keys) and all(any(w in k.lower() for w in UPSAMPLER_WORDS) for k in keys)


def _likely_cause(keys: list[str]) -> str:
    if _is_upsampler(keys):
        return "likely a checkpoint for another scale (check `scale`)"
    return "likely another width/depth (check the backbone options such as n_feats)"


def _few(items: list[str], n: int = 3) -> str:
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def save_weights(
    state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None, advice: str = ""
) -> None:
    """Write a safetensors file atomically (a crash never leaves a half-written file; a full disk is a
    one-line error ending in ``advice``, see :func:`kdsr.files.write_atomic`)."""
    data = save_tensors({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata=metadata)
    write_atomic(Path(path), data, advice)
