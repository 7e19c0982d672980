"""Pieces the zoo's CNNs share (EDSR, RCAN, CARN, CSD's CARN), and the key renaming their
official loaders use, so each layer and each checkpoint layout is written once.

Checkpoint layouts handled here besides the networks' own names: BasicSR's (``conv_first``, ...) and
CSD's slimmable re-implementations (``Booooooooooo/CSD``, ``PyTorch version/model/{edsr,rcan,carn}.py``:
``head``/``head_conv``, ``body_conv``, ``upsampler.blocks.k``, ``tail_conv``). The CSD trainer's file
(``model_state_dict`` with DataParallel's ``module.`` prefix) is unwrapped by ``kdsr.weights.unwrap``
before a loader sees it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdsr import KdsrError, Tap

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # RGB mean of DIV2K 1-800, as in EDSR-PyTorch and CSD

Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]


def conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Conv2d:
    """A 'same'-padded conv with bias, the only conv these networks use."""
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)


def check_scale(arch: str, scale: int, allowed: Sequence[int] | None = None) -> None:
    """The sub-pixel upsampler handles powers of two and 3 (or only ``allowed``); anything else is a config error."""
    ok = scale in allowed if allowed is not None else scale == 3 or (scale >= 2 and scale & (scale - 1) == 0)
    if not ok:
        what = ", ".join(map(str, allowed)) if allowed is not None else "2, 3, 4 or 8 (powers of two and 3)"
        raise KdsrError(f"{arch} supports scale {what}; got scale {scale}")


def check_mean(arch: str, rgb_mean: Sequence[float], n_colors: int) -> None:
    if len(rgb_mean) != n_colors:
        raise KdsrError(f"{arch}: rgb_mean has {len(rgb_mean)} values but n_colors is {n_colors}; give one per channel")


class MeanShift(nn.Module):
    """Adds ``sign * rgb_range * mean`` per channel: the reference's 1x1 conv (keys ``weight``/``bias``).

    The references freeze it (EDSR-PyTorch, CSD), so by default the tensors are buffers: in the state dict
    under the reference keys but never in ``parameters()`` or an optimiser. ``trainable`` makes them
    parameters, as the official RCAN code effectively does.
    """

    def __init__(self, rgb_range: float, rgb_mean: Sequence[float], sign: int, trainable: bool = False) -> None:
        super().__init__()
        n = len(rgb_mean)
        # zeros + fill_diagonal_ / mul_ rather than eye / a product: ops with C++ meta kernels, so building on the
        # meta device (export's shape checks) does not import torch._dynamo (~1 s of every kdsr infer's start)
        weight = torch.zeros(n, n).fill_diagonal_(1.0).view(n, n, 1, 1)
        bias = torch.tensor(list(rgb_mean), dtype=torch.float32).mul_(sign * rgb_range)
        if trainable:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.diagonal = not trainable  # a frozen diagonal weight; re-checked on every state-dict load

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - torch's hook
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        incoming = state_dict.get(prefix + "weight")
        if incoming is None or incoming.is_meta or self.weight.requires_grad:
            return  # nothing to look at (or a trainable shift, which keeps the convolution)
        w = incoming.detach().reshape(incoming.shape[0], -1)
        self.diagonal = w.shape[1] == w.shape[0] and torch.equal(w, torch.diag_embed(w.diagonal()))

    def forward(self, x: torch.Tensor, pre: float = 1.0, post: float = 1.0) -> torch.Tensor:
        """``post * shift(pre * x)``: the scalings around the shift (to and from ``rgb_range``) ride along.

        A diagonal weight (the references' frozen ``eye(n) / std``) is one per-channel multiply-add
        (``addcmul``), not a 1x1 convolution: on a full-resolution 3-channel image that saves a
        convolution's layout work and two passes over the image, which a narrow student feels.
        """
        if self.diagonal:
            n = self.weight.shape[0]
            gain = (self.weight.reshape(n, n).diagonal() * (pre * post)).view(1, n, 1, 1)
            return torch.addcmul((self.bias * post).view(1, n, 1, 1), x, gain)
        y = F.conv2d(x * pre if pre != 1.0 else x, self.weight, self.bias)
        return y * post if post != 1.0 else y


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler without activations: (conv to 4C, pixel shuffle 2) per factor of two, or conv
    to 9C + shuffle 3 (EDSR-PyTorch ``common.Upsampler``; CSD's ``common.Upsampler`` computes the same)."""

    def __init__(self, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [conv(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        else:
            for _ in range(scale.bit_length() - 1):
                layers += [conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        super().__init__(*layers)


STRIP_VALUES = 16 * 320 * 64  # LR pixels x channels of the tail's input per strip at inference (16 rows of a 720p x4 input at 64 ch)
TAIL_HALO = 2  # LR rows of context: conv (1 LR px) + convs after each shuffle (1/2 + 1/4 ... or 1/3 LR px) < 2


def upsample_in_strips(
    tail: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, watched: Sequence[nn.Module] = ()
) -> torch.Tensor:
    """``tail(x)`` for a sub-pixel tail (convs and pixel shuffles, e.g. :class:`Upsampler` + RGB conv), run
    in pieces of about ``STRIP_VALUES / channels`` LR pixels at inference: several whole images of a batch
    per piece where they fit, else row strips of one image with ``TAIL_HALO`` rows of context.

    The tail's activations are the largest of the network (4C channels at each resolution up to the
    output), so on a whole image its convolutions and shuffles stream them through memory; a piece's
    fit in the CPU's cache. Sized by values (pixels x channels), so a narrow network's strips are as many
    bytes as a wide one's and pay less halo. Measured on a 2-core AVX-512 EPYC (interleaved rounds, EDSR x4
    with 16 blocks at a 320x180 input): the whole network 1.20x faster at 16 channels, 1.24x at 32, 1.55x at
    64 (fixed 16-row strips); a batch of 12 52x52 windows at 64 channels, whose tail ran whole, 1.7x slower
    per pixel than one window until the batch was split into pieces too.
    The result is the whole-image one (the halo covers the tail's
    receptive field; only float rounding of other conv shapes differs). Pieces are used only under
    ``torch.inference_mode`` (kdsr's inference engine) outside tracing, export and compilation, and when
    no hook (a feature tap) is on the ``watched`` modules (those ``tail`` runs), so training, taps and
    ONNX graphs see the plain whole-image call.
    """
    n, c, h, w = x.shape
    budget = max(1, STRIP_VALUES // max(c, 1))  # LR pixels per piece
    if (
        n * h * w <= budget
        or not torch.is_inference_mode_enabled()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or any(m._forward_hooks or m._forward_pre_hooks for module in watched for m in module.modules())
    ):
        return tail(x)
    images, rows = max(1, budget // (h * w)), max(4, budget // max(w, 1))  # whole images per piece, else rows per strip
    if images > 1 or h <= rows + 2 * TAIL_HALO:
        rows = h
    else:
        rows = -(-h // -(-h // rows))  # even strips: no sliver of a last strip paying a whole halo
    out = None
    for i in range(0, n, images):
        for y0 in range(0, h, rows):
            y1 = min(y0 + rows, h)
            a, b = max(y0 - TAIL_HALO, 0), min(y1 + TAIL_HALO, h)
            y = tail(x[i : i + images, :, a:b])
            if out is None:
                out = torch.empty(n, y.shape[1], h * scale, w * scale, dtype=y.dtype, device=y.device, memory_format=_layout(y))
            out[i : i + images, :, y0 * scale : y1 * scale] = y[:, :, (y0 - a) * scale : (y1 - a) * scale]
    return out


def _layout(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


# ---------------------------------------------------------------- official layouts


def rename(state: dict[str, torch.Tensor], rules: Sequence[Rule]) -> dict[str, torch.Tensor]:
    """Apply the first matching ``(regex, replacement)`` rule to each key; unmatched keys stay."""
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def csd_upsampler_rule(source: str, target: str) -> Rule:
    """CSD's ``<source>.blocks.k`` (a list of convs, pixel shuffles not stored) -> ``<target>.{2k}`` of
    :class:`Upsampler`, where every conv is followed by its shuffle."""
    return (rf"^{re.escape(source)}\.blocks\.(\d+)\.", lambda m: f"{target}.{2 * int(m.group(1))}.")


def fill_mean_shift(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layouts without mean-shift tensors (BasicSR keeps the mean as a plain attribute) use the module's own."""
    own = module.state_dict()
    for key in own:
        if key.startswith(("sub_mean.", "add_mean.")) and key not in state:
            state[key] = own[key].detach().clone()
    return state


def basicsr_layout(n_body: int, blocks: Sequence[Rule]) -> tuple[str, list[Rule]]:
    """BasicSR's names for an EDSR-PyTorch-style network (``basicsr/archs/{edsr,rcan}_arch.py``):
    ``conv_first``, ``conv_after_body``, ``upsample``, ``conv_last``, plus the ``blocks`` rules."""
    return (
        "conv_first.weight",
        [
            (r"^conv_first\.", "head.0."),
            *blocks,
            (r"^conv_after_body\.", f"body.{n_body}."),
            (r"^upsample\.", "tail.0."),
            (r"^conv_last\.", "tail.1."),
        ],
    )


def csd_layout(head: str, n_body: int, blocks: Sequence[Rule]) -> tuple[str, list[Rule]]:
    """CSD's names for its slimmable EDSR/RCAN (``PyTorch version/model/{edsr,rcan}.py``): ``head`` (EDSR)
    or ``head_conv`` (RCAN), ``body_conv``, ``upsampler.blocks.k``, ``tail_conv``, plus the ``blocks`` rules."""
    return (
        "body_conv.weight",
        [
            (rf"^{head}\.", "head.0."),
            *blocks,
            (r"^body_conv\.", f"body.{n_body}."),
            csd_upsampler_rule("upsampler", "tail.0"),
            (r"^tail_conv\.", "tail.1."),
        ],
    )


def convert(
    module: nn.Module, state: dict[str, torch.Tensor], layouts: Sequence[tuple[str, Sequence[Rule]]]
) -> dict[str, torch.Tensor]:
    """Rename ``state`` by the first layout whose marker key it holds (``(marker, rules)``), then fill in
    absent mean shifts. A state in the module's own layout matches no marker and only gets the fill."""
    state = dict(state)
    for marker, rules in layouts:
        if marker in state:
            state = rename(state, rules)
            break
    return fill_mean_shift(module, state)


def cascade(x: torch.Tensor, blocks: Sequence[nn.Module], fusions: Sequence[nn.Module]) -> torch.Tensor:
    """CARN's cascading: o_0 = x; stack_i = [stack_{i-1}, block_i(o_{i-1})]; o_i = fusion_i(stack_i).

    Used by nmhkahn's CARN and CSD's (``model/carn.py``, ``Block.forward`` / ``CARN.forward``) alike.
    """
    stack = out = x
    for block, fuse in zip(blocks, fusions):
        stack = torch.cat([stack, block(out)], dim=1)
        out = fuse(stack)
    return out


def cascade_taps(model: nn.Module, entry: nn.Module, fusions: Sequence[nn.Module], upsample: nn.Module) -> dict[str, Tap]:
    """The shared taps of a CARN (no global skip: ``body``, ``body.2`` and ``upsampler.in`` are one tensor)."""
    taps = {"head": Tap(entry)}
    taps.update({f"body.{i}": Tap(fuse) for i, fuse in enumerate(fusions)})
    taps["body"] = Tap(fusions[-1])
    taps["upsampler.in"] = Tap(upsample, kind="input")
    taps["sr"] = Tap(model)
    return taps


class ResidualSR(nn.Module):
    """The EDSR-PyTorch skeleton (EDSR, RCAN): ``sub_mean``, ``head``, ``body`` (blocks + a conv) with a
    global skip, ``tail`` (upsampler + RGB conv), ``add_mean``; subclasses build the modules.

    Input and output are in [0, 1]; inside, images are scaled to ``rgb_range`` (255 for the official
    weights) and the mean is subtracted/added, as in the reference.

    Feature taps (N = batch, C = channels, h x w = LR size, s = scale):

    * ``head``: head conv output, N x C x h x w;
    * ``body.i`` for each block (EDSR: residual block, RCAN: residual group): its output, N x C x h x w;
    * ``body``: body output (after its last conv) before the global skip add, N x C x h x w;
    * ``upsampler.in``: upsampler input (body + head), N x C x h x w;
    * ``sr``: the SR output in [0, 1], N x 3 x sh x sw.
    """

    rgb_range: float
    sub_mean: nn.Module
    add_mean: nn.Module
    head: nn.Sequential
    body: nn.Sequential
    tail: nn.Sequential

    scale: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x, pre=self.rgb_range))
        x = self.body(x) + x  # out-of-place: the ``body`` tap keeps the pre-skip value
        return upsample_in_strips(self._upsample, x, self.scale, watched=(self.tail, self.add_mean))

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_mean(self.tail(x), post=1.0 / self.rgb_range)

    def feature_taps(self) -> dict[str, Tap]:
        taps = {"head": Tap(self.head)}
        taps.update({f"body.{i}": Tap(self.body[i]) for i in range(len(self.body) - 1)})
        taps["body"] = Tap(self.body)
        taps["upsampler.in"] = Tap(self.tail[0], kind="input")
        taps["sr"] = Tap(self)
        return taps

