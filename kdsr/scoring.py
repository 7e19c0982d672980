"""How hard an LR patch is: the difficulty measures routing policies threshold, and a learned scorer.

Each measure returns an *ease* score for a 1x3xhxw LR tensor in [0, 1]: higher means easier content,
so the cheapest branch serves the highest scores.

* ``redegradation``: Dynamic-CSD's rule (PSNR of the LR image against its bicubic down-up copy);
* ``gradient``: mean absolute gradient; ``edge``: mean absolute Laplacian, ARM's edge score;
* ``variance``: mean local variance;
* ``learned``: :class:`LearnedScorer`, a least-squares regressor fitted post hoc on a calibration folder
  that predicts from these cheap features how much squared error each cheaper branch adds on a patch, the
  patch's share of the image's PSNR loss (ClassSR's idea of a per-patch difficulty predictor, without
  retraining the SR network).
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
    return official_psnrs(sr, hr, scale, benchmark)[0]


def official_psnrs(sr: torch.Tensor, hr: torch.Tensor, scale: int, benchmark: bool = True) -> list[float]:
    """:func:`official_calc_psnr` of each image of an Nx3xhxw batch."""
    diff = sr - hr
    if benchmark:
        shave = scale
        if diff.shape[-3] > 1:
            diff = (diff * diff.new_tensor(OFFICIAL_Y_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    else:
        shave = scale + 6
    if min(diff.shape[-2:]) <= 2 * shave + 1:
        shave = 0
    h, w = diff.shape[-2:]
    mse = diff[..., shave : h - shave, shave : w - shave].pow(2).flatten(1).mean(1).tolist()
    return [float("inf") if m == 0 else -10 * math.log10(m) for m in mse]


# Each measure scores every patch of an Nx3xhxw batch (patches of one shape, scored in one call: routing
# scores all of an image's patches at once); the functions of one patch below are these on a batch of one.


def redegradation_psnrs(lr: torch.Tensor, scale: int, benchmark: bool = True) -> list[float]:
    """Dynamic-CSD's score of each patch: PSNR between it and its bicubic down-up re-degradation (see
    :func:`redegradation_psnr`)."""
    h, w = lr.shape[-2:]
    if min(h, w) < scale:
        lr = F.pad(lr, (0, max(scale - w, 0), 0, max(scale - h, 0)), mode="replicate")
        h, w = lr.shape[-2:]
    down = F.interpolate(lr, scale_factor=1 / scale, mode="bicubic", align_corners=False).clamp(0, 1)
    up = quantize(F.interpolate(down, scale_factor=scale, mode="bicubic", align_corners=False))
    uh, uw = up.shape[-2:]
    top, left = (h - uh) // 2, (w - uw) // 2
    ref = lr[..., top : top + uh, left : left + uw]
    return [min(p, 100.0) for p in official_psnrs(up, ref, scale, benchmark)]


def gradient_energies(lr: torch.Tensor, scale: int = 1) -> list[float]:
    """:func:`gradient_energy` of each patch."""
    zero = lr.new_zeros(lr.shape[0])
    gy = (lr[..., 1:, :] - lr[..., :-1, :]).abs().flatten(1).mean(1) if lr.shape[-2] > 1 else zero
    gx = (lr[..., :, 1:] - lr[..., :, :-1]).abs().flatten(1).mean(1) if lr.shape[-1] > 1 else zero
    return [-g * 255.0 for g in (gx + gy).tolist()]


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def edge_scores(lr: torch.Tensor, scale: int = 1) -> list[float]:
    """:func:`edge_score` of each patch."""
    gray = lr.mean(1, keepdim=True)
    if min(gray.shape[-2:]) < 3:
        return [0.0] * lr.shape[0]
    return [-e * 255.0 for e in F.conv2d(gray, _LAPLACIAN.to(gray)).abs().flatten(1).mean(1).tolist()]


def local_variances(lr: torch.Tensor, scale: int = 1, window: int = 7) -> list[float]:
    """:func:`local_variance` of each patch."""
    gray = lr.mean(1, keepdim=True) * 255.0
    k = min(window, *gray.shape[-2:])
    mean = F.avg_pool2d(gray, k, 1)
    sq = F.avg_pool2d(gray * gray, k, 1)
    return [-v for v in (sq - mean * mean).clamp_min(0).flatten(1).mean(1).tolist()]


def redegradation_psnr(lr: torch.Tensor, scale: int, benchmark: bool = True) -> float:
    """Dynamic-CSD's score: PSNR between the LR image and its bicubic down-up re-degradation.

    As in the official ``dynamic_test.py`` (``evaluate``): torch bicubic (no antialias) down by 1/s, clamp,
    up by s, quantise, compare on the common centre crop with ``official_calc_psnr`` (``benchmark``: Y,
    ``scale`` shaved; else RGB, ``scale + 6`` shaved), capped at 100 dB. Smooth content survives
    re-degradation (high PSNR, easy); texture does not. A sliver thinner than ``scale`` (an image's last
    patch) is edge-padded to ``scale`` pixels first, so it can be re-degraded at all.
    """
    return redegradation_psnrs(lr, scale, benchmark)[0]


def gradient_energy(lr: torch.Tensor, scale: int = 1) -> float:
    """Negated mean absolute gradient (x255): flat content scores high (easy); an axis one pixel long adds 0."""
    return gradient_energies(lr, scale)[0]


def edge_score(lr: torch.Tensor, scale: int = 1) -> float:
    """ARM's edge score, negated: the mean absolute Laplacian of the grey patch (x255).

    ARM (Chen et al., ECCV 2022, Sec. 3.3) ranks patches by the Laplacian edge detector's response and
    routes edge-rich ones to wider subnets; flat patches score high (easy) here."""
    return edge_scores(lr, scale)[0]


def local_variance(lr: torch.Tensor, scale: int = 1, window: int = 7) -> float:
    """Negated mean local variance (in 8-bit units²) over ``window``-sized neighbourhoods."""
    return local_variances(lr, scale, window)[0]


MEASURES = {"redegradation": redegradation_psnr, "gradient": gradient_energy, "edge": edge_score, "variance": local_variance}
# the same measures over a batch of patches of one shape: a list of scores, one per patch
BATCHED = {"redegradation": redegradation_psnrs, "gradient": gradient_energies, "edge": edge_scores, "variance": local_variances}
LEARNED = "learned"  # the measure a calibration fits (:class:`LearnedScorer`); not a fixed function


# ------------------------------------------------------------------ learned scorer


def patch_features(lr: torch.Tensor, scale: int) -> np.ndarray:
    """The cheap per-patch features the learned scorer regresses on: every fixed measure, plus the
    squares of the variance-like ones (the error a narrow branch adds grows faster than linearly with texture)."""
    return patches_features(lr, scale)[0]


def patches_features(lr: torch.Tensor, scale: int) -> np.ndarray:
    """:func:`patch_features` of each patch of an Nx3xhxw batch (N x F)."""
    values = np.array([fn(lr, scale) for fn in BATCHED.values()], dtype=np.float64).T  # N x measures
    grad, edge, var = values[:, 1], values[:, 2], values[:, 3]
    root = np.sqrt(np.where(var < 0, -var, 0.0))
    return np.concatenate([values, np.stack([grad * grad, edge * edge, root], axis=1)], axis=1)


class LearnedScorer:
    """A ridge least-squares regressor: patch features -> each branch's loss against the full branch (the
    policies fit the squared error it adds, :func:`kdsr.builtin.policies.fit_scorer`).

    Fitted after training (no change to the SR network), on the per-patch PSNRs a budget calibration
    computes anyway. The budget policy routes by the per-branch predictions themselves (which wider branch
    removes most error per unit of cost: :func:`kdsr.builtin.policies.gain_moves`); :meth:`ease` (the
    negated mean predicted loss over the cheaper branches) sums them up in one number, as a measure's score does.
    Features are standardised; ``ridge`` keeps the fit stable on few patches.
    """

    def __init__(self, ridge: float = 1e-3) -> None:
        self.ridge = ridge
        self.mean = self.std = self.weights = None
        self.branches: list[str] = []

    def fit(self, features: np.ndarray, losses: np.ndarray, branches: Sequence[str]) -> LearnedScorer:
        """``features``: N x F, ``losses``: N x B (what each of ``branches`` loses against the full one)."""
        n = features.shape[0]
        if n < features.shape[1] + 1:
            raise KdsrError(
                f"learned scorer: {n} calibration patch(es) for {features.shape[1]} features; give a calibration folder with more or larger images, "
                "or a fixed measure (measure=redegradation)"
            )
        self.mean, self.std = features.mean(0), features.std(0) + 1e-9
        x = np.hstack([np.ones((n, 1)), (features - self.mean) / self.std])
        reg = self.ridge * n * np.eye(x.shape[1])
        reg[0, 0] = 0.0  # the intercept is not shrunk
        self.weights = np.linalg.solve(x.T @ x + reg, x.T @ losses)
        self.branches = list(branches)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted loss per branch, for one feature vector (B) or a batch (N x B)."""
        if self.weights is None:
            raise RuntimeError("LearnedScorer.predict before fit")
        f = np.atleast_2d(features)
        x = np.hstack([np.ones((f.shape[0], 1)), (f - self.mean) / self.std])
        out = x @ self.weights
        return out[0] if features.ndim == 1 else out

    def ease(self, features: np.ndarray) -> float:
        return -float(np.mean(self.predict(features)))

    def eases(self, features: np.ndarray) -> list[float]:
        """:meth:`ease` of each row of an N x F batch."""
        return (-self.predict(np.atleast_2d(features)).mean(axis=1)).tolist()
