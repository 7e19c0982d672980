"""A width of a CSSR-Net as the plain backbone it is: the same registered network built narrow.

At width w a CSSR-Net computes exactly a narrow copy of its backbone made of the weight slices (every
conv keeps ``int(C * w)`` outputs, the upsampler ``r^2 * int(C * w)``, ...). Exporting that branch means
finding the options that build the narrow copy and handing over the slices:

1. the slices a probe pass at w uses give every tensor's shape (``CSSRNet.sliced_state``);
2. the width option is the int option ``k`` for which the backbone built with ``k = int(value * w)`` has
   exactly those shapes (``n_feats`` for EDSR, RCAN and CARN, ``nf`` for IMDN; found by building candidates
   on the meta device, so no backbone needs to declare it). If no single option fits, one other int option
   is changed as well, nearest values first: RCAN's squeeze ``int(C/r * w)`` becomes the narrow network's
   own ``n_feats' // r'`` (``r' = r`` whenever C is a multiple of r);
3. the narrow network, loaded with the slices, must give the branch's output on a probe image; otherwise
   the branch is not that backbone and the export stops with an error instead of writing something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from kdsr import KdsrError, PlainNetwork
from kdsr.plugins import registry

if TYPE_CHECKING:
    from torch import nn

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class BackboneSpec:
    """The registered backbone, options and scale a CSSR-Net was built from."""

    backbone: str
    options: dict[str, Any] = field(default_factory=dict)
    scale: int = 4


def narrow_network(net: nn.Module, spec: BackboneSpec, width: float) -> PlainNetwork:
    """The width-``width`` branch of the CSSR-Net ``net`` as ``spec``'s backbone built at that width."""
    if not 0.0 < width <= 1.0:
        raise KdsrError(f"CSSR-Net width must be in (0, 1], got {width}")
    state = net.sliced_state(width)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    options = narrow_options(spec, shapes, width)
    plain = PlainNetwork(spec.backbone, options, spec.scale, state)
    _check_equal(net, plain, width)
    return plain


def narrow_options(spec: BackboneSpec, shapes: Shapes, width: float) -> dict[str, Any]:
    """Options of ``spec.backbone`` whose network has exactly ``shapes`` (see the module docstring)."""
    options = dict(spec.options)
    if _shapes(spec, options) == shapes:
        return options
    entry = registry("backbone").get(spec.backbone)
    full = entry.validate(options, where=f"backbone '{spec.backbone}'")
    ints = {k: v for k, v in full.items() if type(v) is int and v > 1}
    scored = []
    for key, value in ints.items():
        candidate = {**options, key: int(value * width)}
        found = _shapes(spec, candidate)
        if found == shapes:
            return candidate
        if found is not None:
            scored.append((_mismatches(found, shapes), key, candidate))
    if scored:
        _, key, base = min(scored, key=lambda s: s[0])
        for other, value in ints.items():
            if other == key:
                continue
            for v in sorted(range(1, max(value, base[key]) + 1), key=lambda v: (abs(v - value), v)):
                candidate = {**base, other: v}
                if _shapes(spec, candidate) == shapes:
                    return candidate
    raise KdsrError(
        f"the w{float(width)} branch of backbone '{spec.backbone}' has tensor shapes that narrowing its int options "
        f"({', '.join(ints) or 'none'}) does not reproduce; it cannot be exported as a plain '{spec.backbone}' "
        f"(choose another width)"
    )


def _shapes(spec: BackboneSpec, options: dict[str, Any]) -> Shapes | None:
    """Tensor shapes of the backbone built with ``options`` on the meta device (None: it cannot be built)."""
    try:
        with torch.device("meta"):
            net = registry("backbone").create(spec.backbone, options, scale=spec.scale)
    except (KdsrError, ValueError, TypeError, RuntimeError):
        return None
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _mismatches(found: Shapes, wanted: Shapes) -> int:
    return len(set(found) ^ set(wanted)) + sum(found[k] != wanted[k] for k in set(found) & set(wanted))


def _check_equal(net: nn.Module, plain: PlainNetwork, width: float) -> None:
    """The narrow network built from ``plain`` must compute the branch (same ops on the same slices)."""
    p = next(net.parameters())
    small = registry("backbone").create(plain.backbone, plain.options, scale=plain.scale)
    small.load_state_dict(plain.state_dict, strict=True)
    small.to(device=p.device, dtype=p.dtype).eval()
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0)).to(device=p.device, dtype=p.dtype)
    was_training = net.training
    net.eval()
    try:  # without TF32: cuDNN may pick other algorithms for the sliced and the contiguous weights
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            want, got = net(x, width=width), small(x)
    finally:
        net.train(was_training)
    diff = (want - got).abs().max().item()
    if diff > 1e-5 * max(want.abs().max().item(), 1.0):  # the same ops on the same tensors: rounding at most
        raise KdsrError(
            f"the w{float(width)} branch of backbone '{plain.backbone}' is not a plain '{plain.backbone}' with options "
            f"{plain.options}: their outputs differ by {diff:.3g}; it cannot be exported (choose another width)"
        )
