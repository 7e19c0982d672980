"""Builtin image sources: a folder of HR images, paired HR/LR folders, scikit-image's bundled photos."""

from __future__ import annotations

from kdsr.data import ImageFolder, PairedFolders, SkimageSamples
from kdsr.hookspecs import Register, hookimpl


def folder(root: str, limit: int | None = None) -> ImageFolder:
    """HR images of a folder (LR made by the degradation); optionally only the first `limit`, by name."""
    return ImageFolder(root, limit)


def paired(hr_root: str, lr_root: str) -> PairedFolders:
    """HR and LR folders matched by file name (LR may end in x2/x3/x4, as DIV2K's); no degradation."""
    return PairedFolders(hr_root, lr_root)


def samples(names: list[str] | None = None) -> SkimageSamples:
    """Photos bundled with scikit-image (astronaut, chelsea, coffee, motorcycle, rocket); no download."""
    return SkimageSamples(names)


@hookimpl
def register_datasets(register: Register) -> None:
    register("folder", folder)
    register("paired", paired)
    register("samples", samples)
