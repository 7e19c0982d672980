"""Image sources: sequences of full HR images (and optional LR) that datasets plugins return.

Sources list their files up front (so a bad path fails at start-up) and read pixels only on access;
``SRPairs`` does the mod-crop, degradation and caching.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdsr.data.io import list_images, read_image
from kdsr.errors import KdsrError, did_you_mean


@dataclass
class Sample:
    """One image of a set: ``hr`` is uint8 3xHxW; ``lr`` is the matching LR for paired sets."""

    name: str
    hr: Tensor
    lr: Tensor | None = None


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise KdsrError(
                f"image folder '{folder}' has two images named '{f.stem}' ({out[f.stem].name}, {f.name}); "
                f"keep one of them"
            )
        out[f.stem] = f
    return out


def _examples(names: list[str], n: int = 5) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


class ImageFolder(Sequence[Sample]):
    """HR images of a folder (sorted by name), optionally only the first ``limit``."""

    def __init__(self, root: str | Path, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise KdsrError(f"dataset limit must be a positive number of images, got {limit}; remove it or raise it")
        self.root = Path(root)
        files = list_images(self.root)
        _by_stem(files, self.root)
        self.files = files[:limit] if limit is not None else files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        f = self.files[i]
        return Sample(f.stem, read_image(f))


_SCALE_SUFFIX = re.compile(r"x\d+$", re.IGNORECASE)


class PairedFolders(Sequence[Sample]):
    """HR and LR folders matched by file stem; LR stems may carry a scale suffix (DIV2K ``0001x2.png``)."""

    def __init__(self, hr_root: str | Path, lr_root: str | Path) -> None:
        self.hr_root, self.lr_root = Path(hr_root), Path(lr_root)
        hr = _by_stem(list_images(self.hr_root), self.hr_root)
        lr: dict[str, Path] = {}
        stray: list[str] = []
        for f in list_images(self.lr_root):
            key = f.stem if f.stem in hr else _SCALE_SUFFIX.sub("", f.stem)
            if key not in hr:
                stray.append(f.name)
            elif key in lr:
                raise KdsrError(
                    f"LR folder '{self.lr_root}' has two images for HR '{key}' ({lr[key].name}, {f.name}); "
                    f"keep one scale per folder"
                )
            else:
                lr[key] = f
        missing = [hr[k].name for k in hr if k not in lr]
        if missing:
            raise KdsrError(
                f"{len(missing)} HR images in '{self.hr_root}' have no LR in '{self.lr_root}' ({_examples(missing)}); "
                f"name each LR like its HR, optionally with a suffix such as x2"
            )
        if stray:
            raise KdsrError(
                f"{len(stray)} LR images in '{self.lr_root}' match no HR in '{self.hr_root}' ({_examples(stray)}); "
                f"remove them or add their HR images"
            )
        self.pairs = [(k, hr[k], lr[k]) for k in hr]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        name, hr, lr = self.pairs[i]
        return Sample(name, read_image(hr), read_image(lr))


def _load_skimage(name: str) -> np.ndarray:
    from skimage import data  # only the samples dataset needs scikit-image

    return data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()


# The natural RGB photographs that scikit-image ships inside its wheel (no download needed).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "motorcycle", "rocket")


class SkimageSamples(Sequence[Sample]):
    """Natural RGB photos bundled with scikit-image: a dataset that needs no download (smoke tests, demos)."""

    def __init__(self, names: Sequence[str] | None = None) -> None:
        names = list(SKIMAGE_PHOTOS if names is None else names)
        if not names:
            raise KdsrError(f"samples: names is empty; pick some of {', '.join(SKIMAGE_PHOTOS)} or leave it out")
        for n in names:
            if n not in SKIMAGE_PHOTOS:
                raise KdsrError(
                    f"samples: unknown image '{n}'{did_you_mean(n, SKIMAGE_PHOTOS)}; "
                    f"available: {', '.join(SKIMAGE_PHOTOS)}"
                )
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        name = self.names[i]
        arr = _load_skimage(name)
        return Sample(name, torch.from_numpy(arr.transpose(2, 0, 1).copy()))
