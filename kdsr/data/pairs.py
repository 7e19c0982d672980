"""(LR, HR) pairs and training patches: what the engine trains and evaluates on."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from kdsr.data.datasets import Sample
from kdsr.data.imresize import bicubic_degrade
from kdsr.data.io import quantize, to_float
from kdsr.errors import KdsrError

Degrade = Callable[[Tensor, int], Tensor]


def mod_crop(hr: Tensor, scale: int) -> Tensor:
    """Crop bottom/right so H and W are multiples of ``scale`` (the benchmark convention)."""
    h, w = hr.shape[-2:]
    return hr[..., : h - h % scale, : w - w % scale]


class SRPairs(Sequence[tuple[str, Tensor, Tensor]]):
    """Item i is ``(name, lr, hr)``, uint8 3xHxW, HR mod-cropped and LR exactly HR/scale.

    The LR is the sample's own (paired sets) or ``quantize(degrade(hr, scale))``: stored as 8 bits, as
    the literature's LR PNGs are. The default degradation is MATLAB bicubic on the uint8 HR (byte-identical
    to MATLAB's LR). With ``cache`` the pairs are kept in memory after first use, so degradation runs once
    per image.
    """

    def __init__(
        self, source: Sequence[Sample], scale: int, degrade: Degrade | None = None, cache: bool = True
    ) -> None:
        self.source = source
        self.scale = int(scale)
        self.degrade = degrade or bicubic_degrade
        self._cache: dict[int, tuple[str, Tensor, Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[str, Tensor, Tensor]:  # type: ignore[override]
        i = range(len(self))[i]  # normalise negatives, IndexError past the end
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        item = self._make(self.source[i])
        if self._cache is not None:
            self._cache[i] = item
        return item

    def _make(self, sample: Sample) -> tuple[str, Tensor, Tensor]:
        s = self.scale
        hr = mod_crop(sample.hr, s)
        h, w = hr.shape[-2:]
        if h == 0 or w == 0:
            size = tuple(sample.hr.shape[-2:])
            raise KdsrError(f"image '{sample.name}' ({size[1]}x{size[0]}) is smaller than the scale x{s}; remove it")
        want = (h // s, w // s)
        if sample.lr is not None:
            lr = sample.lr
            if tuple(lr.shape[-2:]) != want:
                raise KdsrError(
                    f"image '{sample.name}': LR is {lr.shape[-1]}x{lr.shape[-2]} but HR {w}x{h} (mod-cropped) needs "
                    f"{want[1]}x{want[0]} at x{s}; check the LR folder and the scale"
                )
        else:
            out = self.degrade(to_float(hr), s)
            if tuple(out.shape) != (3, *want):
                raise KdsrError(
                    f"image '{sample.name}': the degradation returned shape {tuple(out.shape)} for HR {w}x{h}, "
                    f"expected (3, {want[0]}, {want[1]}); fix the degradation plugin"
                )
            lr = quantize(out).mul(255).round().to(torch.uint8)
        return sample.name, lr.contiguous(), hr.contiguous()


class TrainPatches:
    """Random aligned (LR, HR) patch batches, a pure function of ``(seed, rank, world_size, step)``.

    ``batch(step)`` seeds a private ``torch.Generator`` from ``numpy.random.SeedSequence((seed, step,
    rank, world_size))``, so resuming at step k replays exactly the batches an uninterrupted run would
    have drawn, every DDP rank draws different patches, and no global RNG is touched. Each item picks an
    image uniformly, an LR crop of ``patch_size`` (HR crop = LR crop x scale) and, with ``augment``, the
    EDSR flips/transpose. Images whose LR is smaller than a patch are left out (with a warning).
    Building it reads every pair once to learn the sizes (the cache keeps them).
    """

    def __init__(
        self,
        pairs: SRPairs,
        patch_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = True,
    ) -> None:
        if patch_size < 1 or batch_size < 1:
            raise KdsrError(f"data.patch_size ({patch_size}) and data.batch_size ({batch_size}) must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.pairs, self.patch_size, self.batch_size = pairs, patch_size, batch_size
        self.seed, self.rank, self.world_size, self.augment = seed, rank, world_size, augment
        sizes = [pairs[i][1].shape[-2:] for i in range(len(pairs))]
        self.indices = [i for i, (h, w) in enumerate(sizes) if h >= patch_size and w >= patch_size]
        small = len(sizes) - len(self.indices)
        if not self.indices:
            raise KdsrError(
                f"data: every training image is smaller than the LR patch ({patch_size} px); lower data.patch_size"
            )
        if small:
            warnings.warn(
                f"{small} of {len(sizes)} training images are smaller than the LR patch ({patch_size} px) "
                f"and are left out of sampling",
                stacklevel=2,
            )

    def generator(self, step: int) -> torch.Generator:
        """The private RNG of one step (seed, step, rank and world size mixed by SeedSequence)."""
        entropy = [v % 2**64 for v in (self.seed, step, self.rank, self.world_size)]
        state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state) & (2**63 - 1))

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """``(lr, hr)`` float32 NCHW in [0, 1]: N x 3 x p x p and N x 3 x p*s x p*s."""
        g = self.generator(step)
        n, p, s = self.batch_size, self.patch_size, self.pairs.scale
        picks = torch.randint(len(self.indices), (n,), generator=g)
        corners = torch.rand(n, 2, generator=g, dtype=torch.float64)
        flips = torch.randint(2, (n, 3), generator=g).bool()
        lrs, hrs = [], []
        for k in range(n):
            _, lr, hr = self.pairs[self.indices[int(picks[k])]]
            h, w = lr.shape[-2:]
            top = int(corners[k, 0] * (h - p + 1))
            left = int(corners[k, 1] * (w - p + 1))
            lp = lr[:, top : top + p, left : left + p]
            hp = hr[:, top * s : (top + p) * s, left * s : (left + p) * s]
            if self.augment:
                hflip, vflip, transpose = flips[k].tolist()
                if hflip:
                    lp, hp = lp.flip(-1), hp.flip(-1)
                if vflip:
                    lp, hp = lp.flip(-2), hp.flip(-2)
                if transpose:
                    lp, hp = lp.transpose(-1, -2), hp.transpose(-1, -2)
            lrs.append(lp)
            hrs.append(hp)
        return to_float(torch.stack(lrs)), to_float(torch.stack(hrs))
