"""How hard an LR patch is: the difficulty measures routing policies threshold, and a learned scorer.

Each measure returns an *ease* score for a 1x3xhxw LR tensor in [0, 1]: higher means easier content,
so the cheapest branch serves the highest scores.

* ``redegradation``: Dynamic-CSD's rule (PSNR of the LR image against its bicubic down-up copy);
* ``gradient``: mean absolute gradient; ``edge``: mean absolute Laplacian, ARM's edge score;
* ``variance``: mean local variance;
* ``learned``: :class:`LearnedScorer`, a least-squares regressor fitted post hoc on a calibration folder
  that predicts from these cheap features how much PSNR each cheaper branch loses on a patch (ClassSR's
  idea of a per-patch difficulty predictor, without retraining the SR network).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdsr.errors import KdsrError
from kdsr.metrics import quantize

# Y weights of the official ``calc_psnr`` for a difference of RGB in [0, 1]: BT.601 for [0, 255] over 256
# (65.738 / 256 = 65.481 / 255 to 5 digits; the official constants, not kdsr.metrics', are used here).
OFFICIAL_Y_WEIGHTS = (65.738 / 256, 129.057 / 256, 25.064 / 256)


def official_calc_psnr(sr: torch.Tensor, hr: torch.Tensor, scale: int, benchmark: bool = True) -> float:
    """PSNR as the official ``calc_psnr`` for 1x3xhxw images in [0, 1]: Dynamic-CSD's ``dynamic_test.py`` calls
    ``utils.utility.calc_psnr``; that file is not in the stored Dynamic-CSD snapshot, so the reference read is
    CSD's ``PyTorch version/utils/utility.py: calc_psnr``, the code Dynamic-CSD builds on (methods.md 6.1).

    ``benchmark``: Y of the difference with ``OFFICIAL_Y_WEIGHTS``, ``scale`` pixels shaved; otherwise
    (the official DIV2K-validation mode) RGB with ``scale + 6`` shaved. The shave is dropped on images too
    small to keep two pixels after it (a tile); an exact match scores ``inf``.
    """
    diff = sr - hr
    if benchmark:
        shave = scale
        if diff.shape[-3] > 1:
            diff = (diff * diff.new_tensor(OFFICIAL_Y_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1)
    else:
        shave = scale + 6
    if min(diff.shape[-2:]) <= 2 * shave + 1:
        shave = 0
    h, w = diff.shape[-2:]
    mse = diff[..., shave : h - shave, shave : w - shave].pow(2).mean().item()
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def redegradation_psnr(lr: torch.Tensor, scale: int, benchmark: bool = True) -> float:
    """Dynamic-CSD's score: PSNR between the LR image and its bicubic down-up re-degradation.

    As in the official ``dynamic_test.py`` (``evaluate``): torch bicubic (no antialias) down by 1/s, clamp,
    up by s, quantise, compare on the common centre crop with ``official_calc_psnr`` (``benchmark``: Y,
    ``scale`` shaved; else RGB, ``scale + 6`` shaved), capped at 100 dB. Smooth content survives
    re-degradation (high PSNR, easy); texture does not. A sliver thinner than ``scale`` (an image's last
    patch) is edge-padded to ``scale`` pixels first, so it can be re-degraded at all.
    """
    h, w = lr.shape[-2:]
    if min(h, w) < scale:
        lr = F.pad(lr, (0, max(scale - w, 0), 0, max(scale - h, 0)), mode="replicate")
        h, w = lr.shape[-2:]
    down = F.interpolate(lr, scale_factor=1 / scale, mode="bicubic", align_corners=False).clamp(0, 1)
    up = quantize(F.interpolate(down, scale_factor=scale, mode="bicubic", align_corners=False))
    uh, uw = up.shape[-2:]
    top, left = (h - uh) // 2, (w - uw) // 2
    ref = lr[..., top : top + uh, left : left + uw]
    return min(official_calc_psnr(up, ref, scale, benchmark), 100.0)


def gradient_energy(lr: torch.Tensor, scale: int = 1) -> float:
    """Negated mean absolute gradient (x255): flat content scores high (easy); an axis one pixel long adds 0."""
    gy = (lr[..., 1:, :] - lr[..., :-1, :]).abs().mean() if lr.shape[-2] > 1 else 0.0
    gx = (lr[..., :, 1:] - lr[..., :, :-1]).abs().mean() if lr.shape[-1] > 1 else 0.0
    return -float(gx + gy) * 255.0


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def edge_score(lr: torch.Tensor, scale: int = 1) -> float:
    """ARM's edge score, negated: the mean absolute Laplacian of the grey patch (x255).

    ARM (Chen et al., ECCV 2022, Sec. 3.3) ranks patches by the Laplacian edge detector's response and
    routes edge-rich ones to wider subnets; flat patches score high (easy) here."""
    gray = lr.mean(1, keepdim=True)
    if min(gray.shape[-2:]) < 3:
        return 0.0
    return -float(F.conv2d(gray, _LAPLACIAN.to(gray)).abs().mean()) * 255.0


def local_variance(lr: torch.Tensor, scale: int = 1, window: int = 7) -> float:
    """Negated mean local variance (in 8-bit units²) over ``window``-sized neighbourhoods."""
    gray = lr.mean(1, keepdim=True) * 255.0
    k = min(window, *gray.shape[-2:])
    mean = F.avg_pool2d(gray, k, 1)
    sq = F.avg_pool2d(gray * gray, k, 1)
    return -float((sq - mean * mean).clamp_min(0).mean())


MEASURES = {"redegradation": redegradation_psnr, "gradient": gradient_energy, "edge": edge_score, "variance": local_variance}
LEARNED = "learned"  # the measure a calibration fits (:class:`LearnedScorer`); not a fixed function


# ------------------------------------------------------------------ learned scorer


def patch_features(lr: torch.Tensor, scale: int) -> np.ndarray:
    """The cheap per-patch features the learned scorer regresses on: every fixed measure, plus the
    squares of the variance-like ones (PSNR loss grows faster than linearly with texture)."""
    values = [float(fn(lr, scale)) for fn in MEASURES.values()]
    grad, edge, var = values[1], values[2], values[3]
    return np.array([*values, grad * grad, edge * edge, math.sqrt(-var) if var < 0 else 0.0], dtype=np.float64)


class LearnedScorer:
    """A ridge least-squares regressor: patch features -> each branch's PSNR loss against the full branch.

    Fitted after training (no change to the SR network), on the per-patch PSNRs a budget calibration
    computes anyway. Its ease score is the negated mean predicted loss over the cheaper branches: patches
    where narrow branches are predicted to lose little are served by them first. Features are
    standardised; ``ridge`` keeps the fit stable on few patches.
    """

    def __init__(self, ridge: float = 1e-3) -> None:
        self.ridge = ridge
        self.mean = self.std = self.weights = None
        self.branches: list[str] = []

    def fit(self, features: np.ndarray, losses: np.ndarray, branches: Sequence[str]) -> LearnedScorer:
        """``features``: N x F, ``losses``: N x B (dB lost by each of ``branches`` against the full one)."""
        n = features.shape[0]
        if n < features.shape[1] + 1:
            raise KdsrError(
                f"learned scorer: {n} calibration patch(es) for {features.shape[1]} features; give a calibration folder with more or larger images"
            )
        self.mean, self.std = features.mean(0), features.std(0) + 1e-9
        x = np.hstack([np.ones((n, 1)), (features - self.mean) / self.std])
        reg = self.ridge * n * np.eye(x.shape[1])
        reg[0, 0] = 0.0  # the intercept is not shrunk
        self.weights = np.linalg.solve(x.T @ x + reg, x.T @ losses)
        self.branches = list(branches)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted PSNR loss (dB) per branch, for one feature vector (B) or a batch (N x B)."""
        if self.weights is None:
            raise RuntimeError("LearnedScorer.predict before fit")
        f = np.atleast_2d(features)
        x = np.hstack([np.ones((f.shape[0], 1)), (f - self.mean) / self.std])
        out = x @ self.weights
        return out[0] if features.ndim == 1 else out

    def ease(self, features: np.ndarray) -> float:
        return -float(np.mean(self.predict(features)))
