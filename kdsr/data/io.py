"""Image files <-> uint8 3xHxW tensors, with one clear error for every file that cannot be used.

Everything becomes 8-bit RGB on read, so that HR, LR and SR are compared on the same footing as the
literature's MATLAB pipelines (``imread`` + ``im2double``). EXIF orientation is deliberately ignored,
as MATLAB ``imread`` does, so that LR files made elsewhere stay aligned with their HR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from kdsr.errors import KdsrError
from kdsr.metrics import quantize  # noqa: F401  (re-exported: one implementation)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def read_image(path: str | Path) -> Tensor:
    """Read an image as uint8 RGB, 3xHxW.

    Grayscale is replicated to 3 channels, palettes expanded, 16-bit rounded to 8-bit (x/257);
    a fully opaque alpha channel is dropped and any transparency is an error, because there is no
    right background to guess.
    """
    path = Path(path)
    if not path.is_file():
        raise KdsrError(f"image '{path}' does not exist or is not a file; check the path")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here (LOAD_TRUNCATED_IMAGES stays False)
            arr = _to_rgb(im, path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KdsrError(f"image '{path}' cannot be read ({reason}); replace or remove the file") from None
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    """HxWx3 uint8 from any Pillow mode."""
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(im).astype(np.int64)
        if mode in _SIXTEEN_BIT or a.max(initial=0) > 255:  # 'I' above 255: a 16-bit PNG/TIFF
            a = np.rint(a.clip(0, 65535) / 257.0)
        return np.repeat(a.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        raise KdsrError(f"image '{path}' is floating-point (mode F); save it as 8- or 16-bit first")
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
    elif mode == "1":
        im = im.convert("L")
    mode = im.mode
    if mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"))
        if (alpha != 255).any():
            raise KdsrError(f"image '{path.name}' has transparency; flatten it onto a background first")
        im = im.convert("RGB" if mode == "RGBA" else "L")
        mode = im.mode
    if mode == "L":
        return np.repeat(np.asarray(im)[..., None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGB")  # CMYK, YCbCr, RGBX, LAB, HSV
    return np.asarray(im)


def write_image(path: str | Path, img: Tensor | np.ndarray) -> None:
    """Write a 3xHxW tensor (floats in [0, 1] are quantised: clamp, x255, round; uint8 as is) or an
    HxWx3 uint8 array, which is written without any copy in float (what ``kdsr infer`` hands over).

    The format follows the suffix (PNG when there is none); use ``.png`` to keep results lossless.
    """
    path = Path(path)
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
            raise ValueError(f"write_image needs an HxWx3 uint8 array, got {img.dtype} of shape {img.shape}")
        arr = img
    else:
        if img.dim() != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"write_image needs a 3xHxW (or 1xHxW) tensor, got shape {tuple(img.shape)}")
        if img.dtype != torch.uint8:
            img = img.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
        arr = img.detach().cpu().permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pil.save(path, format=None if path.suffix else "PNG")
    except (ValueError, KeyError):
        raise KdsrError(f"cannot write '{path}': unknown image format '{path.suffix}'; use .png") from None


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (by extension, any case), sorted; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KdsrError(f"image folder '{folder}' does not exist; check the path")
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise KdsrError(
            f"image folder '{folder}' has no images ({', '.join(IMAGE_EXTENSIONS)}); point it at a folder of images"
        )
    return files


def to_float(img: Tensor) -> Tensor:
    """uint8 -> float32 in [0, 1]."""
    return img.to(torch.float32).div_(255)
