"""The Python API: ``kdsr.load`` a trained network, ``kdsr.upscale`` an image with it.

    import kdsr
    model = kdsr.load("runs/csd_edsr", branch="w0.25")  # or an exported / official weights file
    sr = kdsr.upscale(model, "lr.png")                     # a PIL image; numpy / tensor in, same kind out

``upscale`` runs the same inference path as ``kdsr infer`` (:class:`kdsr.inference.Router`, tile by
tile with ``overlap`` pixels of context, as many tiles per pass as the router's window size holds, at
most ``batch``), so results match the CLI's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdsr.branches import Branch
from kdsr.errors import KdsrError
from kdsr.inference import Choice, Router
from kdsr.runtime import FP32, Runtime
from kdsr.models import load

__all__ = ["load", "router_for", "upscale"]


def router_for(
    branch: Branch,
    scale: int,
    tile: int | str | None = 128,
    overlap: int = 16,
    batch: int | None = None,
    device: torch.device | str = "cpu",
    runtime: Runtime = FP32,
) -> Router:
    """A router that always runs ``branch`` (the ``full`` policy over one choice) under ``runtime``."""
    from kdsr.plugins import registry

    full = registry("policy").create("full")
    return Router({"model": branch}, [Choice("model", 1.0)], full, scale, tile, overlap, batch, device, runtime)


def upscale(
    model: nn.Module,
    image: Any,
    tile: int | str | None = "auto",
    overlap: int = 16,
    batch: int | None = None,
    scale: int | None = None,
    device: torch.device | str | None = None,
) -> Any:
    """Super-resolve one image with ``model`` (e.g. from :func:`kdsr.load`), as ``kdsr infer`` does.

    ``image``: a path (returns a PIL image), a PIL image, a numpy uint8 HxWx3 array, or a tensor (uint8, or
    float in [0, 1]; 3xHxW or 1x3xHxW); the result is of the same kind. Like ``kdsr infer``'s PNGs it has
    8-bit values (a float tensor holds them in [0, 1]). ``tile``: an LR tile side, ``None`` for the whole
image at once, or ``"auto"`` (as ``kdsr infer``: whole images up to the router's window size, see
:class:`kdsr.inference.Router`).
    ``scale`` defaults to ``model.scale`` or is measured on a tiny input; ``device`` to the model's.
    """
    lr, back = _to_tensor(image)
    param = next(model.parameters(), None)
    device = device if device is not None else (param.device if param is not None else "cpu")
    scale = scale or _scale_of(model, device)
    tile_ok = tile is None or tile == "auto" or (isinstance(tile, int) and tile >= 1)
    if not tile_ok or overlap < 0 or (batch is not None and batch < 1):
        raise KdsrError(f"upscale: tile must be >= 1, None or 'auto', overlap >= 0 and batch >= 1, got {tile!r}, {overlap}, {batch}")
    was_training = model.training
    model.eval()
    try:
        routed = router_for(Branch(model), scale, tile, overlap, batch, device)(lr)
    finally:
        model.train(was_training)
    return back(routed.image)


def _scale_of(model: nn.Module, device: torch.device | str) -> int:
    scale = getattr(model, "scale", None)
    if isinstance(scale, int) and scale >= 1:
        return scale
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 16, 16, device=device))
    return int(out.shape[-1]) // 16


def _to_tensor(image: Any) -> tuple[torch.Tensor, Callable[[np.ndarray], Any]]:
    """A 1x3xhxw float tensor in [0, 1] on the CPU, and how to turn the HxWx3 uint8 SR image back into
    ``image``'s kind."""
    from PIL import Image

    from kdsr.data import read_image, to_float

    if isinstance(image, (str, Path)):
        return to_float(read_image(image)).unsqueeze(0), Image.fromarray
    if isinstance(image, Image.Image):
        return _from_hwc(np.asarray(image.convert("RGB"))), Image.fromarray
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise KdsrError(f"upscale: a numpy image must be uint8 HxWx3, got {image.dtype} {image.shape}")
        return _from_hwc(image), lambda sr: sr
    if isinstance(image, torch.Tensor):
        if image.dim() not in (3, 4) or image.shape[-3] != 3 or (image.dim() == 4 and image.shape[0] != 1):
            raise KdsrError(f"upscale: a tensor image must be 3xHxW or 1x3xHxW, got {tuple(image.shape)}")
        x = image.detach().cpu().reshape(1, *image.shape[-3:])
        u8 = image.dtype == torch.uint8
        x = to_float(x) if u8 else x.float()

        def back(sr: np.ndarray) -> torch.Tensor:
            out = torch.from_numpy(sr).permute(2, 0, 1)
            out = out if u8 else to_float(out).to(image.dtype)
            return (out if image.dim() == 3 else out.unsqueeze(0)).to(image.device)

        return x, back
    raise KdsrError(f"upscale: cannot read an image from a {type(image).__name__}; give a path, PIL image, numpy uint8 HxWx3 or tensor")


def _from_hwc(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float().div_(255).unsqueeze(0)
