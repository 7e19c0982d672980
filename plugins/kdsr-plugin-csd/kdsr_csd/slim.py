"""CSSR-Net: run any CNN backbone at a width w in (0, 1] using the leading slices of its own weights.

``make_slimmable(net)`` changes the network in place, keeping every parameter and its name (so the
backbone's checkpoints and official weights still load):

* every ``nn.Conv2d`` becomes a ``SlicedConv2d``, which at width w uses ``weight[:int(C_out * w),
  :C_in_arriving]``: input channels follow whatever arrives, output channels are the leading
  ``int(C_out * w)``. This is the official CSD slicing (methods.md 1.1; CSD ``model/common.py``,
  ``SlimModule`` and ``ResidualBlock.forward``), and it gives RCAN's channel attention (squeeze ``C/16`` ->
  ``int(C/16 * w)``, CSD ``model/rcan.py``, ``CALayer.forward``) without special cases. Any width in
  (0, 1] works; one that leaves a conv no output channel is an error naming the width and the conv;
* a conv feeding a pixel shuffle of factor r keeps ``r^2 * int(C_out / r^2 * w)`` outputs, the first
  ``int(C * w)`` maps after the shuffle (CSD ``model/common.py``, ``Upsampler.forward``: ``width * 4``,
  not ``int(4 C w)``, which is not a multiple of 4 at w = 0.6 on 64 channels);
* a conv fed by a single conv A whose input width it restores (full width: its ``C_out`` is A's ``C_in``;
  an excite conv after its squeeze conv, the second conv of a residual block) outputs as many channels as
  arrived at A, so a gate matches the map it multiplies (IMDN's attention over 4 x int(d w) distilled
  channels, not int(4 d w)). Wherever ``int(C_out * w)`` already gives that count, nothing changes;
* the convs whose output reaches the network output without passing another conv (the RGB tail, or
  IMDN's ``3 r^2`` upsampler conv) keep all their output channels; the RGB input is never sliced because
  only 3 channels arrive. These convs, the shuffle feeders and the restoring convs are found by walking the
  autograd graph of one probe forward pass;
* the network's class becomes a subclass with ``forward(x, width=1.0)``, ``branch_params(width)``,
  ``sliced_state(width)`` and ``to_plain(width)`` (the width-w branch as the narrow backbone, ``narrow.py``).

Channel concatenations (CARN's cascades) are recorded during the probe pass (``torch.cat`` along the
channel dim, through a ``TorchFunctionMode``); with ``concat_slicing="aligned"`` a conv that consumes a
concatenation directly takes the leading ``int(p * w)`` input channels *of each concatenated part*
instead of the leading ones of the whole (the official ``prefix``). Channel splits with fixed sizes
(IMDN's ``torch.split(x, (distilled, remaining), dim=1)``) are rescaled at width w to
``int(s * w)`` for every part but the last, which takes the rest.

Layers whose parameters depend on the channel count and cannot be sliced this way (linear layers,
normalisation, transposed or non-2D convolutions) are refused with an error that names them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from kdsr import KdsrError, PlainNetwork
from kdsr_csd.narrow import BackboneSpec, narrow_network

_CATS = (torch.cat, torch.concat, torch.concatenate)
_SPLITS = (torch.split, torch.Tensor.split)
_UNSLICEABLE = (
    nn.Linear,
    nn.modules.conv._ConvTransposeNd,
    nn.Conv1d,
    nn.Conv3d,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.PReLU,
    nn.modules.lazy.LazyModuleMixin,
)


class WidthState:
    """The active width of one CSSR-Net, shared by its convs (a plain object: never in the state dict)."""

    def __init__(self) -> None:
        self.width = 1.0
        self.split_channels = False  # the network splits channels into fixed-size parts (IMDN)
        # conv -> the single conv feeding it whose input width it restores
        self.restores: dict[nn.Module, nn.Module] = {}
        # each conv's (weight, bias), set while recording the slices of one width
        self.used: dict[nn.Module, tuple[torch.Tensor, torch.Tensor | None]] | None = None


class SlicedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that uses the leading slice of its weight at its network's active width."""

    _cssr: WidthState
    cssr_name: str  # the conv's module path, for error messages
    fixed_out: bool  # output channels are never sliced (the conv writes the RGB output)
    out_unit: int  # output channels come in whole units of this size (r^2 before a pixel shuffle)
    in_parts: tuple[int, ...] | None  # full-width channel counts of the concatenated parts of its input
    aligned: bool  # slice each concatenated part, not the whole input
    arrived: int  # input channels of the latest narrow call (read by the conv that restores this width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = self._cssr
        if state.width == 1.0:
            weight, bias = self.weight, self.bias
        else:
            self.arrived = x.shape[1]
            weight, bias = self.sliced(x.shape[1], state.width)
        if state.used is not None:
            state.used[self] = (weight, bias)
        return self._conv_forward(x, weight, bias)

    def out_width(self, width: float) -> int:
        """Output channels at ``width`` (see the module docstring)."""
        if self.fixed_out:
            return self.out_channels
        source = self._cssr.restores.get(self)
        if source is not None:
            return source.arrived
        c_out = self.out_unit * int(self.out_channels // self.out_unit * width)
        if c_out == 0:
            least = math.ceil(self.out_unit / self.out_channels * 1e4) / 1e4  # rounded up: it keeps a channel
            raise KdsrError(
                f"width {width} leaves no output channel in conv '{self.cssr_name}' ({self.out_channels} at full "
                f"width); use a width of at least {least:g}"
            )
        return c_out

    def sliced(self, c_in: int, width: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias for ``c_in`` arriving channels at ``width``."""
        c_out = self.out_width(width)
        if c_out < self.groups or c_out % self.groups or c_in % self.groups:
            raise KdsrError(
                f"width {width}: conv '{self.cssr_name}' with {self.out_channels} outputs and {self.groups} groups gets "
                f"{c_out} outputs and {c_in} inputs, which do not fit; choose a width that keeps whole channel groups"
            )
        weight = self.weight[:c_out]
        if self.aligned and self.in_parts is not None:
            weight = weight.index_select(1, self._aligned_index(c_in, width))
        else:
            weight = weight[:, : c_in // self.groups]
        bias = self.bias[:c_out] if self.bias is not None else None
        return weight, bias

    def _aligned_index(self, c_in: int, width: float) -> torch.Tensor:
        assert self.in_parts is not None
        index, offset = [], 0
        for part in self.in_parts:
            index.extend(range(offset, offset + int(part * width)))
            offset += part
        if len(index) != c_in:
            raise KdsrError(
                f"aligned concat slicing: the parts {list(self.in_parts)} give {len(index)} channels at width "
                f"{width}, but {c_in} arrive; use concat_slicing: prefix for this backbone"
            )
        return torch.tensor(index, device=self.weight.device)


class CSSRNet:
    """Mixin put in front of the backbone's class: a width-switchable forward, per-width parameter counts and
    slices, and each width as a plain network."""

    _cssr: WidthState
    cssr_spec: BackboneSpec | None  # the registered backbone it was built from (set by the ``cssr`` constructor)

    def forward(self, x: torch.Tensor, width: float = 1.0) -> Any:
        """The backbone's forward with every conv sliced to ``width`` (1.0: the full network)."""
        if not 0.0 < width <= 1.0:
            raise KdsrError(f"CSSR-Net width must be in (0, 1], got {width}")
        state = self._cssr
        previous, state.width = state.width, float(width)
        try:
            if width < 1.0 and state.split_channels:
                with _ScaleSplits(width):
                    return super().forward(x)  # type: ignore[misc]
            return super().forward(x)  # type: ignore[misc]
        finally:
            state.width = previous

    def branch_params(self, width: float = 1.0) -> int:
        """Parameters the network uses at ``width``: the conv slices a probe pass touches, plus every other
        parameter (e.g. RCAN's trainable mean shift)."""
        module: nn.Module = self  # type: ignore[assignment]
        used = sum(t.numel() for pair in self._slices(width).values() for t in pair if t is not None)
        sliced = {id(p) for m in module.modules() if isinstance(m, SlicedConv2d) for p in m.parameters(recurse=False)}
        others = sum(p.numel() for p in {id(p): p for p in module.parameters()}.values() if id(p) not in sliced)
        return used + others

    def sliced_state(self, width: float) -> dict[str, torch.Tensor]:
        """The state dict of the width-``width`` network: each conv's slice a probe pass uses (a conv the
        pass does not run keeps its full tensors), every other tensor as it is."""
        module: nn.Module = self  # type: ignore[assignment]
        slices = self._slices(width)
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        for name, conv in module.named_modules():
            if conv in slices:
                weight, bias = slices[conv]
                state[f"{name}.weight"] = weight.detach().clone()
                if bias is not None:
                    state[f"{name}.bias"] = bias.detach().clone()
        return state

    def to_plain(self, width: float = 1.0) -> PlainNetwork:
        """The width-``width`` branch as its backbone built at the narrow width with the sliced weights
        (EDSR n_feats 64 at w0.25: EDSR n_feats 16); see ``kdsr_csd.narrow``."""
        spec = getattr(self, "cssr_spec", None)
        if spec is None:
            raise KdsrError(
                f"{type(self).__name__} does not know the registered backbone it was built from; build it with the "
                f"'cssr' student constructor to export its branches"
            )
        return narrow_network(self, spec, width)  # type: ignore[arg-type]

    def _slices(self, width: float) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor | None]]:
        """The (weight, bias) each conv uses in one probe pass at ``width``."""
        module: nn.Module = self  # type: ignore[assignment]
        state = self._cssr
        state.used = {}
        try:
            with torch.no_grad():
                self.forward(_probe_input(module), width)
            return state.used
        finally:
            state.used = None


_CLASSES: dict[type, type] = {}


def slim_class(cls: type) -> type:
    """``CSSR<Backbone>``: the backbone's class with ``CSSRNet`` in front (one per backbone class)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"CSSR{cls.__name__}", (CSSRNet, cls), {"__module__": __name__})
    return _CLASSES[cls]


def make_slimmable(net: nn.Module, concat_slicing: str = "prefix", spec: BackboneSpec | None = None) -> nn.Module:
    """Turn ``net`` into a CSSR-Net in place (same parameters, same names) and return it.

    ``spec``: the registered backbone, options and scale that built ``net`` (needed by ``to_plain``)."""
    if concat_slicing not in ("prefix", "aligned"):
        raise ValueError(f"concat_slicing must be 'prefix' (official) or 'aligned', got {concat_slicing!r}")
    if isinstance(net, CSSRNet):
        raise KdsrError(f"{type(net).__name__} is already a CSSR-Net")
    bad = sorted({type(m).__name__ for m in net.modules() if isinstance(m, _UNSLICEABLE)})
    if bad:
        raise KdsrError(
            f"CSSR-Net slices 2-D convolutions only; {type(net).__name__} has {', '.join(bad)} layers, whose "
            f"parameters depend on the channel count (use a CNN backbone such as edsr, rcan, carn or imdn)"
        )
    custom = sorted({type(m).__name__ for m in net.modules() if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d})
    if custom:
        raise KdsrError(f"CSSR-Net slices plain nn.Conv2d layers; {type(net).__name__} has custom conv classes {', '.join(custom)}")
    state = WidthState()
    named = {m: n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    convs = list(named)
    if not convs:
        raise KdsrError(f"{type(net).__name__} has no nn.Conv2d to slice")
    for conv in convs:
        conv.__class__ = SlicedConv2d
        conv._cssr = state
        conv.cssr_name, conv.fixed_out, conv.out_unit = named[conv], False, 1
        conv.in_parts, conv.aligned, conv.arrived = None, concat_slicing == "aligned", conv.in_channels
    net.__class__ = slim_class(type(net))
    net._cssr = state
    net.cssr_spec = spec
    _probe(net, convs, state)
    return net


# ---------------------------------------------------------------- the probe pass


def _probe_input(net: nn.Module) -> torch.Tensor:
    p = next(net.parameters())
    return torch.zeros(1, 3, 8, 8, device=p.device, dtype=p.dtype)


def _probe(net: nn.Module, convs: list[nn.Conv2d], state: WidthState) -> None:
    """One full-width forward pass: which convs write the output, feed a pixel shuffle, restore the input
    width of the conv feeding them, or read concatenations; any channel splits."""
    recorder = _Recorder()
    handles = [c.register_forward_pre_hook(recorder.conv_input) for c in convs]
    try:
        with torch.enable_grad(), recorder:
            out = net(_probe_input(net))
    finally:
        for h in handles:
            h.remove()
    state.split_channels = recorder.split_channels
    by_weight = {id(c.weight): c for c in convs}
    for conv in convs:
        conv.in_parts = recorder.conv_parts.get(conv)
        feeders = _feeding_convs(recorder.conv_inputs.get(conv, []), by_weight)
        if len(feeders) == 1:
            (source,) = feeders
            if source is not conv and conv.out_channels == source.in_channels:
                state.restores[conv] = source
    for shuffled, factor in recorder.shuffles:
        for conv in _feeding_convs([shuffled], by_weight):
            conv.out_unit = factor * factor
            state.restores.pop(conv, None)
    tensors = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
    found = _feeding_convs(tensors, by_weight)
    if not found:
        raise KdsrError("could not find the output convolution of the backbone (its output has no autograd graph)")
    for conv in found:
        conv.fixed_out = True


def _feeding_convs(tensors: list[torch.Tensor], by_weight: dict[int, nn.Conv2d]) -> set[nn.Conv2d]:
    """Convs reached from the tensors' autograd graph without passing through another of the convs."""
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    seen, found = set(), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        conv = _conv_of(node, by_weight)
        if conv is not None:
            found.add(conv)
            continue
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return found


def _conv_of(node: Any, by_weight: dict[int, nn.Conv2d]) -> nn.Conv2d | None:
    if not type(node).__name__.startswith("Convolution"):
        return None
    for child, _ in node.next_functions:
        variable = getattr(child, "variable", None)
        if variable is not None and id(variable) in by_weight:
            return by_weight[id(variable)]
    return None


def _channel_dim(args: tuple, kwargs: dict, tensor: torch.Tensor, position: int) -> bool:
    dim = kwargs.get("dim", args[position] if len(args) > position else 0)
    return tensor.dim() == 4 and dim % 4 == 1


class _Recorder(TorchFunctionMode):
    """Records channel concatenations (flattening nested ones), conv inputs, pixel shuffles and whether
    channels are split."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: dict[int, tuple[torch.Tensor, tuple[int, ...]]] = {}  # id(cat output) -> (output, parts)
        self.conv_parts: dict[nn.Module, tuple[int, ...]] = {}
        self.conv_inputs: dict[nn.Module, list[torch.Tensor]] = {}  # every call's input (shared modules run often)
        self.shuffles: list[tuple[torch.Tensor, int]] = []  # (input, upscale factor) of each pixel shuffle
        self.split_channels = False

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CATS:
            tensors = list(args[0] if args else kwargs["tensors"])
            if tensors and _channel_dim(args, kwargs, tensors[0], 1):
                parts: list[int] = []
                for t in tensors:
                    parts.extend(self.parts[id(t)][1] if id(t) in self.parts else [t.shape[1]])
                self.parts[id(out)] = (out, tuple(parts))  # keeps `out` alive, so its id stays unique
        elif func in _SPLITS and _channel_dim(args, kwargs, args[0], 2):
            self.split_channels = True
        elif func is torch.pixel_shuffle:
            factor = args[1] if len(args) > 1 else kwargs["upscale_factor"]
            self.shuffles.append((args[0] if args else kwargs["input"], int(factor)))
        return out

    def conv_input(self, conv: nn.Module, inputs: tuple) -> None:
        self.conv_inputs.setdefault(conv, []).append(inputs[0])
        found = self.parts.get(id(inputs[0]))
        if found is not None:
            self.conv_parts[conv] = found[1]


class _ScaleSplits(TorchFunctionMode):
    """At width w, ``split(x, sizes, dim=1)`` with full-width sizes becomes ``int(s * w)`` per part, the last
    part taking the rest; an int split size ``s`` becomes ``int(s * w)``."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.width = width

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch protocol
        kwargs = dict(kwargs or {})
        if func in _SPLITS and _channel_dim(args, kwargs, args[0], 2):
            x, sizes = args[0], kwargs.pop("split_size_or_sections", None) or kwargs.pop("split_size", None)
            sizes = args[1] if sizes is None else sizes
            if isinstance(sizes, int):
                sizes = max(int(sizes * self.width), 1)
            elif sum(sizes) != x.shape[1]:
                head = [int(s * self.width) for s in sizes[:-1]]
                sizes = [*head, x.shape[1] - sum(head)]
            kwargs.pop("dim", None)
            return func(x, sizes, dim=1)
        return func(*args, **kwargs)
