"""The ``cssr`` student constructor: one weight-shared CSSR-Net, one branch per width (CSD, Pro-CSD)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from torch import nn

from kdsr import Branch, KdsrError
from kdsr.plugins import registry
from kdsr.weights import load_weights

from kdsr_csd.narrow import BackboneSpec
from kdsr_csd.slim import make_slimmable


def branch_name(width: float) -> str:
    """``w1.0``, ``w0.25``: the branch name of a width (losses and reports refer to it)."""
    return f"w{float(width)}"


def cssr(
    teacher: nn.Module | None,
    scale: int,
    backbone: str,
    options: dict[str, Any] | None = None,
    widths: tuple[float, ...] = (1.0, 0.25),
    weights: Path | None = None,
    concat_slicing: Literal["prefix", "aligned"] = "prefix",
) -> dict[str, Branch]:
    """CSSR-Net (CSD): a CNN backbone run at several widths that share its weights; one branch per width.

    ``backbone``/``options`` build the full-width network (the teacher's architecture); ``weights`` (a
    checkpoint of that backbone, official layouts converted by its loader) initialises it, as CSD does with
    a pre-trained teacher, so every width starts from the teacher's leading channels. Branch ``w<width>``
    calls the shared network with ``width=<width>``. ``concat_slicing``: ``prefix`` (official) or
    ``aligned`` for convs that read channel concatenations (CARN). The stage's ``teacher`` is not used.
    The network records ``backbone``/``options``/``scale``, so each branch exports as the plain backbone
    built at its width (``net.to_plain(width=w)``).
    """
    if not widths:
        raise ValueError("cssr needs at least one width")
    names = [branch_name(w) for w in widths]
    if len(set(names)) != len(names):
        raise ValueError(f"cssr widths must be distinct, got {list(widths)}")
    for w in widths:
        if not 0.0 < w <= 1.0:
            raise ValueError(f"cssr widths must be in (0, 1], got {w}")
    entry = registry("backbone").get(backbone, where="student.options.backbone")
    net = registry("backbone").create(backbone, options, where="student.options.options", scale=scale)
    if weights is not None:
        on_meta = any(p.is_meta for p in net.parameters())
        load_weights(net, weights, entry.extra.get("load_official"), check_only=on_meta)
    make_slimmable(net, concat_slicing, BackboneSpec(backbone, dict(options or {}), scale))
    for w in widths:  # a probe pass per width: a width that does not fit fails here, not mid-training
        try:
            net.branch_params(w)
        except (RuntimeError, KdsrError) as exc:
            raise ValueError(f"width {w} does not fit backbone '{backbone}': {str(exc).splitlines()[0]}") from None
    return {name: Branch(net, {"width": float(w)}) for name, w in zip(names, widths)}
