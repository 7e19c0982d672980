"""SwinIR (Liang et al., ICCVW 2021, arXiv:2108.10257): classical and lightweight image SR.

Faithful to the reference implementation (JingyunLiang/SwinIR ``models/network_swinir.py``, ported
unchanged to BasicSR as ``basicsr/archs/swinir_arch.py``): same maths, same parameter names, so the
official ``params``/``params_ema`` checkpoints load strictly after one conversion step (see
``load_official``). Two deliberate differences, neither changing the parameters:

* Residual Swin Transformer blocks (RSTB) take and return N x C x H x W feature maps rather than token
  sequences, so that every feature tap has the same layout as in the convolutional backbones. The
  reference flattens to tokens and back around each RSTB's convolution; the arithmetic is identical.
* The input is padded inside ``forward`` and the output cropped back, so any LR size works. In eval
  mode this is exactly the padding of ``main_test_swinir.py`` (``process_img``), the script that produced
  the published numbers: it mirrors the image at the bottom/right edge (``cat([x, flip(x)])``, edge
  row repeated) by ``window - size % window`` pixels, i.e. 1..window pixels, a full window even when the
  size is already a multiple. In training mode the input is padded only up to the next multiple (none
  for the aligned training patches, which is what the reference trainer feeds the network). The
  module's own ``SwinIR.check_image_size`` (``models/network_swinir.py``) reflect-pads (edge row not
  repeated) up to the next multiple only; in the published pipeline it never acts, because the script's
  input is already aligned, and kdsr does not use it. The padded border changes the output near the
  bottom/right edges (windows and shifted-window masks see it), so aligned test images need the
  script's padding to give the script's numbers.

The shifted-window attention mask depends only on the padded feature size, so it is computed per
forward pass instead of being stored for one training patch size as the reference does.

Feature taps are cropped back to the LR size (the padded border is left out), so a teacher's and a
student's features line up whatever the input size; see :class:`SwinIR`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from kdsr import Channels, Count, KdsrError, Positive, Tap


def _timm_layers():
    """timm's layers, imported on first use: importing timm pulls in torchvision (~3 s of start-up
    that every `kdsr` command would otherwise pay just to list this backbone)."""
    from timm import layers

    return layers

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean the reference subtracts (img_range 1)
NUM_FEAT = 64  # channels of the classical 'pixelshuffle' reconstruction head (fixed in the reference)
MASK_VALUE = -100.0  # the reference's additive mask between tokens from different shifted regions

CLASSICAL_SCALES = (2, 3, 4, 8)  # official classical checkpoints: x2, x3, x4, x8
LIGHTWEIGHT_SCALES = (2, 3, 4)  # official lightweight checkpoints: x2, x3, x4


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the (2w-1)^2 bias table for every (query, key) pair of a w x w window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # 2 x N
    rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # 2 x N x N, shifted to start at 0
    return rel[0] * (2 * window_size - 1) + rel[1]


def shifted_window_mask(height: int, width: int, window_size: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive attention mask (nW x N x N) that stops tokens wrapped around by the cyclic shift
    from attending to tokens that were not their neighbours. ``height``/``width`` are multiples of
    ``window_size``. Regions are numbered as in the reference: 3 bands per axis, 9 regions in all.
    """

    def bands(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window_size).long() + (idx >= n - shift).long()  # 0 | 1 | 2

    region = bands(height)[:, None] * 3 + bands(width)[None, :]
    windows = rearrange(region, "(nh wh) (nw ww) -> (nh nw) (wh ww)", wh=window_size, ww=window_size)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, MASK_VALUE)


def pad_mirror(x: torch.Tensor, multiple: int, always: bool = False) -> torch.Tensor:
    """Pad H and W to a multiple by mirroring the last rows/columns (edge repeated), like the
    reference test script's ``cat([x, flip(x)])``; also correct when the padding exceeds the size.

    ``always``: pad by ``multiple - size % multiple`` (1..multiple, a full window on aligned sizes), as
    ``main_test_swinir.py`` does; otherwise only up to the next multiple.
    """
    h, w = x.shape[-2:]
    ph, pw = (multiple - h % multiple, multiple - w % multiple) if always else (-h % multiple, -w % multiple)
    if ph:
        x = x.index_select(-2, _mirror_index(h, h + ph, x.device))
    if pw:
        x = x.index_select(-1, _mirror_index(w, w + pw, x.device))
    return x


def _mirror_index(n: int, size: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(size, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent, as in the reference: official checkpoints carry it (the values are derived).
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        _timm_layers().trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: (B*nW) x N x C windows, batch-major; ``mask``: nW x N x N or None."""
        n = x.shape[1]
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        out = attn.softmax(dim=-1) @ v
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and an MLP, each pre-normed and residual, on B x H x W x C maps."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = _timm_layers().DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _timm_layers().Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        ws, shift = self.window_size, self.shift_size
        nh, nw = x.shape[1] // ws, x.shape[2] // ws
        y = self.norm1(x)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = rearrange(y, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=ws, ww=ws)
        windows = self.attn(windows, mask if shift else None)
        y = rearrange(windows, "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c", nh=nh, nw=nw, wh=ws)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ResidualGroup(nn.Module):
    """The Swin layers of one RSTB (the reference's ``BasicLayer``; named for its key ``residual_group``)."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, drop_path: Sequence[float]
    ) -> None:
        super().__init__()
        shifts = [0 if i % 2 == 0 else window_size // 2 for i in range(depth)]  # W-MSA, SW-MSA, W-MSA, ...
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, shifts[i], mlp_ratio, drop_path[i]) for i in range(depth)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin layers, a 3x3 conv, and a skip; N x C x H x W in and out."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, drop_path: Sequence[float]
    ) -> None:
        super().__init__()
        self.residual_group = ResidualGroup(dim, depth, num_heads, window_size, mlp_ratio, drop_path)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.residual_group(rearrange(x, "b c h w -> b h w c"), mask)
        return self.conv(rearrange(y, "b h w c -> b c h w")) + x


class PatchEmbed(nn.Module):
    """LayerNorm over channels applied before the RSTBs (patch size 1: no projection, only the norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_norm(self.norm, x)


def channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply a LayerNorm over the C of an N x C x H x W map (the reference does it on tokens)."""
    return rearrange(norm(rearrange(x, "b c h w -> b h w c")), "b h w c -> b c h w")


class LRCrop(nn.Module):
    """A parameter-free tap point: the LR-sized top-left region of a padded feature map (a view).

    Its output is not used by the forward computation (which continues on the padded map, as the
    reference does); it exists so that a feature tap sees exactly the LR-sized feature.
    """

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x[..., : size[0], : size[1]]


def upsample_layers(scale: int, num_feat: int) -> nn.Sequential:
    """The classical reconstruction upsampler: (conv, PixelShuffle(2)) per factor 2, or one x3 step."""
    if scale == 3:
        return nn.Sequential(nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3))
    layers: list[nn.Module] = []
    for _ in range(int(math.log2(scale))):
        layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


class SwinIR(nn.Module):
    """SwinIR for bicubic SR: shallow conv, RSTBs with a global skip, pixel-shuffle reconstruction.

    Input and output are RGB in [0, 1]; the DIV2K mean is subtracted inside, as in the reference.
    Any LR size works: the input is mirror-padded to a multiple of ``window_size`` (in eval mode by
    1..``window_size`` pixels as ``main_test_swinir.py`` does, see the module docstring) and the output
    cropped to exactly ``scale`` times the input. Tiled inference changes the output (windows and
    padding follow the tile, not the image), which ``tiles_change_output`` declares to ``kdsr.tiling``.

    Feature taps, all N x ``embed_dim`` x h x w at the LR size. The network computes on the input
    padded to a multiple of ``window_size``; each tap is the LR-sized region of that feature (the
    padded border dropped), taken by a parameter-free ``LRCrop`` module under ``tap_crops``:

    * ``head``: output of the shallow conv ``conv_first``.
    * ``body.0`` ... ``body.{n-1}``: output of each RSTB (``layers.i``).
    * ``body``: output of ``conv_after_body``, the deep features before the global skip add.
    * ``upsampler.in``: input of the reconstruction (``conv_before_upsample`` for the classical
      'pixelshuffle' head, ``upsample`` for the lightweight 'pixelshuffledirect' one), i.e. body + head.

    The uncropped (padded) features stay reachable by submodule path, e.g. ``conv_first`` or ``layers.0``.
    """

    def __init__(
        self,
        scale: int,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: int,
        mlp_ratio: float,
        upsampler: str,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.window_size = window_size
        self.upsampler = upsampler
        self.tiles_change_output = "shifted-window attention over windows aligned to the input's corner"
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(3, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        # Stochastic depth rising linearly over all layers, as in the reference (plain floats, so the
        # model also builds on the meta device).
        n = sum(depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            RSTB(embed_dim, d, h, window_size, mlp_ratio, rates[s : s + d]) for d, h, s in zip(depths, num_heads, starts)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        names = ["head", *(f"body_{i}" for i in range(len(depths))), "body", "upsampler_in"]
        self.tap_crops = nn.ModuleDict({name: LRCrop() for name in names})  # no parameters

        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1), nn.LeakyReLU())
            self.upsample = upsample_layers(scale, NUM_FEAT)
            self.conv_last = nn.Conv2d(NUM_FEAT, 3, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, 3 * scale**2, 3, 1, 1), nn.PixelShuffle(scale))
        else:
            raise KdsrError(f"SwinIR upsampler '{upsampler}' is not supported; use 'pixelshuffle' or 'pixelshuffledirect'")
        self.apply(_init_weights)

    def feature_taps(self) -> dict[str, Tap]:
        crops = self.tap_crops
        taps = {"head": Tap(crops["head"])}
        taps.update({f"body.{i}": Tap(crops[f"body_{i}"]) for i in range(len(self.layers))})
        taps["body"] = Tap(crops["body"])
        taps["upsampler.in"] = Tap(crops["upsampler_in"])
        return taps

    def forward_features(self, x: torch.Tensor, lr_size: tuple[int, int]) -> torch.Tensor:
        mask = shifted_window_mask(x.shape[2], x.shape[3], self.window_size, self.window_size // 2, x.device)
        x = self.patch_embed(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask)
            self.tap_crops[f"body_{i}"](x, lr_size)
        return channel_norm(self.norm, x)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h, w = lr.shape[-2:]
        taps = self.tap_crops
        x = pad_mirror(lr, self.window_size, always=not self.training) - self.mean  # eval: as main_test_swinir.py
        head = self.conv_first(x)
        taps["head"](head, (h, w))
        body = self.conv_after_body(self.forward_features(head, (h, w)))
        taps["body"](body, (h, w))
        x = body + head
        taps["upsampler_in"](x, (h, w))
        if self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        return (x + self.mean)[..., : h * self.scale, : w * self.scale]


def _init_weights(m: nn.Module) -> None:
    """The reference's init (convs keep PyTorch's default); matters only when training from scratch."""
    if isinstance(m, nn.Linear):
        _timm_layers().trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check(
    name: str,
    scale: int,
    supported: tuple[int, ...],
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: int,
) -> None:
    if scale not in supported:
        raise KdsrError(f"backbone '{name}' supports scale {', '.join(map(str, supported))}, not {scale}")
    if not depths or len(depths) != len(num_heads):
        raise KdsrError(
            f"backbone '{name}': depths and num_heads need one entry per RSTB (got {list(depths)} and {list(num_heads)})"
        )
    if any(embed_dim % h for h in num_heads):
        raise KdsrError(
            f"backbone '{name}': embed_dim {embed_dim} must be divisible by every num_heads entry {list(num_heads)}"
        )
    if window_size < 2:
        raise KdsrError(f"backbone '{name}': window_size must be at least 2 (got {window_size})")


def swinir(
    scale: int,
    embed_dim: Channels = 180,
    depths: tuple[Count, ...] = (6, 6, 6, 6, 6, 6),
    num_heads: tuple[Count, ...] = (6, 6, 6, 6, 6, 6),
    window_size: Count = 8,
    mlp_ratio: Positive = 2.0,
    drop_path_rate: float = 0.1,
) -> SwinIR:
    """SwinIR classical SR (SwinIR-M: 6 RSTB x 6 layers, 180 channels, window 8), x2/x3/x4/x8.

    Defaults are the reference's classical-SR model (``main_test_swinir.py --task classical_sr``);
    its checkpoints are ``001_classicalSR_{DIV2K_s48w8,DF2K_s64w8}_SwinIR-M_x{2,3,4,8}.pth``.
    ``drop_path_rate`` only acts in training.
    """
    _check("swinir", scale, CLASSICAL_SCALES, embed_dim, depths, num_heads, window_size)
    return SwinIR(scale, embed_dim, depths, num_heads, window_size, mlp_ratio, "pixelshuffle", drop_path_rate)


def swinir_light(
    scale: int,
    embed_dim: Channels = 60,
    depths: tuple[Count, ...] = (6, 6, 6, 6),
    num_heads: tuple[Count, ...] = (6, 6, 6, 6),
    window_size: Count = 8,
    mlp_ratio: Positive = 2.0,
    drop_path_rate: float = 0.1,
) -> SwinIR:
    """SwinIR lightweight SR (SwinIR-S: 4 RSTB x 6 layers, 60 channels, one-step pixel shuffle), x2/x3/x4.

    Defaults are the reference's lightweight model (``main_test_swinir.py --task lightweight_sr``);
    its checkpoints are ``002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{2,3,4}.pth``.
    ``drop_path_rate`` only acts in training.
    """
    _check("swinir_light", scale, LIGHTWEIGHT_SCALES, embed_dim, depths, num_heads, window_size)
    return SwinIR(scale, embed_dim, depths, num_heads, window_size, mlp_ratio, "pixelshuffledirect", drop_path_rate)


def checkpoint_scale(state: dict[str, torch.Tensor], upsampler: str) -> int | None:
    """The scale a SwinIR state dict was trained for, read from its upsampler weights (None if absent)."""
    first = state.get("upsample.0.weight")
    if first is None:
        return None
    if upsampler == "pixelshuffledirect":
        return math.isqrt(first.shape[0] // 3)
    convs = sum(1 for k in state if k.startswith("upsample.") and k.endswith(".weight"))
    return 3 if first.shape[0] == 9 * first.shape[1] else 2**convs


def load_official(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a reference/BasicSR SwinIR state dict (already unwrapped from ``params``/``params_ema``)
    onto :class:`SwinIR`.

    * ``*.attn_mask`` buffers are dropped: the reference stores the shifted-window mask for its
      training patch size (``img_size``, e.g. 64 -> a 64 x 64 x 64 tensor per shifted layer); it
      is a pure function of the feature size, so kdsr recomputes it for every input instead.
    * ``*.relative_position_index`` buffers are kept when present (identical values) and filled
      from the module when a converted file left them out; they are derived, never learned.

    A checkpoint for another scale is reported as such rather than as missing keys.
    """
    if not isinstance(module, SwinIR):
        raise TypeError(f"swinir.load_official expects a SwinIR module, got {type(module).__name__}")
    found = checkpoint_scale(state, module.upsampler)
    if found is not None and found != module.scale:
        raise KdsrError(
            f"weights do not fit SwinIR x{module.scale}: the checkpoint is for another scale, x{found} "
            f"(check `scale`: set it to {found}, or use the x{module.scale} checkpoint)"
        )
    out = {k: v for k, v in state.items() if not k.endswith(".attn_mask")}
    for key, value in module.state_dict().items():
        if key.endswith(".relative_position_index") and key not in out:
            out[key] = value
    return out


def register_backbones(register) -> None:  # noqa: ANN001 - kdsr's Register callable
    register("swinir", swinir, load_official=load_official)
    register("swinir_light", swinir_light, load_official=load_official)
