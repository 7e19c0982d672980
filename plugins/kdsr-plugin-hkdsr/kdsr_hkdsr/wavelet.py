"""One level of the 2-D discrete wavelet transform in torch, with PyWavelets' filters and boundary rules.

HKDSR's FSM compares high-frequency wavelet sub-bands; the official code uses ``pytorch_wavelets``
(Haar, mode 'zero'). Here the filters come from ``pywt.Wavelet(name)`` (any discrete wavelet pywt
knows), the signal is extended as ``pywt.dwt2(..., mode=...)`` extends it, and the filtering is a
stride-2 ``conv2d`` per axis, so it is differentiable and runs on any device. The sub-bands equal
``pywt.dwt2``'s (cA, (cH, cV, cD)) (tested to 1e-6 in float64).
"""

from __future__ import annotations

import numpy as np
import pywt
import torch
import torch.nn.functional as F

# pywt mode -> numpy.pad mode for the index map (zero padding is handled separately)
_NUMPY_PAD = {"symmetric": "symmetric", "reflect": "reflect", "constant": "edge", "periodic": "wrap"}
MODES = ("zero", *_NUMPY_PAD)


def _extend(x: torch.Tensor, dim: int, pad: int, mode: str) -> torch.Tensor:
    """Extend ``x`` by ``pad`` samples on both ends of ``dim`` with pywt's boundary ``mode``."""
    if pad == 0:
        return x
    if mode == "zero":
        widths = [0, 0] * (x.dim() - 1 - dim) + [pad, pad]
        return F.pad(x, widths)
    index = np.pad(np.arange(x.shape[dim]), pad, mode=_NUMPY_PAD[mode])
    return x.index_select(dim, torch.as_tensor(index, device=x.device))


def _analysis_1d(x: torch.Tensor, dim: int, lo: torch.Tensor, hi: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Low- and high-pass outputs along ``dim`` (2 or 3 of an N x C x H x W tensor), downsampled by 2.

    pywt convolves the signal extended by L-1 samples per side with the decomposition filter and keeps
    the odd samples; conv2d correlates, so the filters are flipped and the first extended sample dropped.
    Output length: floor((n + L - 1) / 2).
    """
    n_taps = lo.numel()
    x = _extend(x, dim, n_taps - 1, mode).narrow(dim, 1, x.shape[dim] + 2 * (n_taps - 1) - 1)
    c = x.shape[1]
    shape = (1, 1, n_taps, 1) if dim == 2 else (1, 1, 1, n_taps)
    stride = (2, 1) if dim == 2 else (1, 2)
    weight = torch.stack([lo.flip(0), hi.flip(0)]).view(2, *shape[1:]).repeat(c, 1, 1, 1)
    out = F.conv2d(x, weight.to(dtype=x.dtype, device=x.device), stride=stride, groups=c)
    return out[:, 0::2], out[:, 1::2]


class DWT2:
    """Single-level 2-D DWT of N x C x H x W tensors: ``(LL, (LH, HL, HH))`` as ``pywt.dwt2`` names
    ``(cA, (cH, cV, cD))``: cH is low-pass along W and high-pass along H (horizontal edges)."""

    def __init__(self, wavelet: str = "haar", mode: str = "zero") -> None:
        if mode not in MODES:
            raise ValueError(f"wavelet mode '{mode}' is not supported; use one of {', '.join(MODES)}")
        try:
            w = pywt.Wavelet(wavelet)
        except ValueError:
            raise ValueError(f"'{wavelet}' is not a discrete wavelet PyWavelets knows (see pywt.wavelist(kind='discrete'))") from None
        self.wavelet, self.mode = wavelet, mode
        self.lo = torch.tensor(w.dec_lo, dtype=torch.float64)
        self.hi = torch.tensor(w.dec_hi, dtype=torch.float64)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        low_w, high_w = _analysis_1d(x, 3, self.lo, self.hi, self.mode)  # along W
        ll, lh = _analysis_1d(low_w, 2, self.lo, self.hi, self.mode)  # low along W; low/high along H
        hl, hh = _analysis_1d(high_w, 2, self.lo, self.hi, self.mode)
        return ll, (lh, hl, hh)

    def high(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three high-frequency sub-bands (LH, HL, HH)."""
        return self(x)[1]
