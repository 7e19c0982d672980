"""A branch as a standalone network: what ``kdsr export`` writes and ``kdsr.load`` rebuilds.

A trained branch is often not a plain network (a width of a channel-split CSSR-Net, a student with
intermediate SR heads). A branch module that is not simply a registered backbone implements
``to_plain(**branch_kwargs) -> PlainNetwork``: the registered backbone it is equivalent to, the
options that build it, and the weights, so the exported file needs nothing from its run.

The file describes itself: ``backbone``, ``options`` (JSON), ``scale``, ``kdsr_version``, the
``source_*`` it came from and its Multi-Adds per LR pixel at a 1280x720 output (``macs_per_lr_pixel``,
what routing prices it at, so loading it counts nothing), in the safetensors metadata (or a
``<file>.json`` sidecar next to an ONNX or TorchScript file). ``describe`` reads that description back
without reading the tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from kdsr.errors import KdsrError

MACS_KEY = "macs_per_lr_pixel"  # metadata key: Multi-Adds per LR pixel at a 1280x720 output


@dataclass
class PlainNetwork:
    """A registered backbone, the options that build it, its scale and its weights."""

    backbone: str
    options: dict[str, Any]
    scale: int
    state_dict: dict[str, torch.Tensor] = field(repr=False)

    def metadata(self, format: str = "safetensors", macs_per_lr_pixel: float | None = None, **source: str | None) -> dict[str, str]:
        """The self-description written with the file (``format``: how the network is stored;
        ``macs_per_lr_pixel``: its Multi-Adds per LR pixel at a 1280x720 output); ``source`` adds
        ``source_<key>`` entries (run, stage, branch, file)."""
        import kdsr

        meta = {
            "format": format,
            "backbone": self.backbone,
            "options": json.dumps(self.options, sort_keys=True),
            "scale": str(self.scale),
            "kdsr_version": kdsr.__version__,
        }
        if macs_per_lr_pixel is not None:
            meta[MACS_KEY] = repr(float(macs_per_lr_pixel))
        meta.update({f"source_{k}": str(v) for k, v in source.items() if v is not None})
        return meta

    def build(self) -> nn.Module:
        """The backbone from the registry with these weights, strictly loaded, in eval mode."""
        from kdsr.plugins import registry
        from kdsr.weights import check_compatible

        model = registry("backbone").create(self.backbone, self.options, where=f"backbone '{self.backbone}'", scale=self.scale)
        check_compatible(model, self.state_dict, f"plain {self.backbone}")
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


@runtime_checkable
class Exportable(Protocol):
    """A branch module that knows the plain network each of its branches is."""

    def to_plain(self, **branch_kwargs: Any) -> PlainNetwork: ...


@dataclass(frozen=True)
class Description:
    """What a self-describing weights file says it is."""

    backbone: str
    options: dict[str, Any]
    scale: int
    meta: dict[str, str]

    @property
    def macs_per_lr_pixel(self) -> float | None:
        """The Multi-Adds per LR pixel (1280x720 output) the export counted, or None: an older export or a
        foreign file, which routing counts itself, as it does a value that is not a positive number."""
        try:
            value = float(self.meta[MACS_KEY])
        except (KeyError, ValueError):
            return None
        return value if math.isfinite(value) and value > 0 else None


def sidecar(path: str | Path) -> Path:
    """The JSON description next to an ONNX / TorchScript file: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def describe(path: str | Path) -> Description | None:
    """The description in a file's safetensors metadata (or its sidecar), or None for a foreign file.

    Reads only the header, so it is cheap; a file whose header cannot be read is left to the weights
    reader, which names the problem.
    """
    path = Path(path)
    meta: dict[str, str] | None = None
    if sidecar(path).is_file():
        try:
            meta = json.loads(sidecar(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise KdsrError(f"description '{sidecar(path)}' is not readable JSON ({exc}); re-export the file") from None
    elif path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
        except Exception:  # truncated or not safetensors: the weights reader names the problem in one line
            from kdsr.weights import read_state_dict

            read_state_dict(path)
            return None
    if not meta or "backbone" not in meta:
        return None
    try:
        options = json.loads(meta.get("options", "{}"))
        scale = int(meta["scale"])
    except (KeyError, ValueError) as exc:
        raise KdsrError(f"weights '{path}' carry a broken kdsr description ({type(exc).__name__}: {exc}); re-export the file") from None
    if not isinstance(options, dict):
        raise KdsrError(f"weights '{path}': metadata 'options' must be a JSON object, got {meta['options']!r}; re-export the file")
    return Description(meta["backbone"], options, scale, dict(meta))
