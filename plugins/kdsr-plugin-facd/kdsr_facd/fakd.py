"""FAKD: feature-affinity knowledge distillation (He, Dai, Lu, Jiang, Xia, ICIP 2020).

Follows the official code (Vincent-Hoo/Knowledge-Distillation-for-Super-resolution: ``train.py``,
``loss.py``, ``feature_transformation.py``): each feature map F (C x HW) is L2-normalised per
spatial position over its channels, its spatial affinity is A = F^T F (HW x HW cosine similarities),
and

    L = (1 - alpha) * L1(S, HR) + alpha * L1(S, T) + beta * sum_taps L1(A_S, A_T)

with L1 the mean absolute difference (``nn.L1Loss``), alpha 0.5 and beta 10 (``--feature_distilation_type
10*SA``). The affinity does not depend on the width, so teacher and student may differ in width.

Units: the official code computes the pixel terms on [0, 255] images (``--rgb_range 255``), kdsr on
[0, 1]; the affinities are unit-free. To keep the paper's beta with the official balance between the
terms, the affinity term is weighted beta / rgb_range (10 / 255 by default); the whole loss is then the
official one divided by rgb_range, which Adam's update does not see.

Memory: A is (HW)^2 per image and tap (2304^2 floats = 21 MB for a 48x48 LR patch). The distance is
summed over chunks of ``images_per_chunk`` images and each chunk is recomputed in the backward pass
(activation checkpointing), so only one chunk's affinities exist at a time and nothing of size
(HW)^2 is kept for backward. The pooled variant (official ``PSA``) max- or average-pools the feature
with a k x k window (stride k, ceil mode) before the affinity, dividing the size by k^4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kdsr import Batch, Loss, Needs, Outputs
from kdsr_facd.taps import tap_pairs

# Added to the per-position norm: 1e-8 in the official ``spatial_similarity`` of the version that has the
# pooled ``PSA`` variant (``code/feature_transformation.py`` @ 4e4f747); an earlier version (@ 1ed28d9) added 1e-7.
EPS = 1e-8
# Official taps: RCAN after residual groups 2 and 6 and the body-tail conv. The official forward adds the
# global skip in place (``res += x``) after storing that last map, so the third feature it distils is
# body + head, i.e. kdsr's ``upsampler.in``.
DEFAULT_TAPS = ("body.2", "body.6", "upsampler.in")


def normalise_positions(
    feat: torch.Tensor, pool_size: int = 1, pool_type: Literal["max", "avg"] = "max", eps: float = EPS
) -> torch.Tensor:
    """N x C x H x W -> N x C x HW with each spatial column divided by its L2 norm + ``eps`` (after optional pooling)."""
    if pool_size > 1:
        pool = F.max_pool2d if pool_type == "max" else F.avg_pool2d
        feat = pool(feat, pool_size, stride=pool_size, ceil_mode=True)
    flat = feat.flatten(2)
    return flat / (flat.norm(dim=1, keepdim=True) + eps)


def spatial_affinity(
    feat: torch.Tensor, pool_size: int = 1, pool_type: Literal["max", "avg"] = "max", eps: float = EPS
) -> torch.Tensor:
    """N x HW x HW cosine similarities between all pairs of positions (materialises the whole matrix)."""
    unit = normalise_positions(feat, pool_size, pool_type, eps)
    return unit.transpose(1, 2) @ unit


def _abs_diff_sum(unit_s: torch.Tensor, unit_t: torch.Tensor) -> torch.Tensor:
    """sum |S^T S - T^T T| with the difference as one product: [S; T]^T [S; -T] (one HW x HW matrix, not three)."""
    diff = torch.cat([unit_s, unit_t], dim=1).transpose(1, 2) @ torch.cat([unit_s, -unit_t], dim=1)
    return diff.abs().sum()


def affinity_l1(
    student: torch.Tensor,
    teacher: torch.Tensor,
    pool_size: int = 1,
    pool_type: Literal["max", "avg"] = "max",
    images_per_chunk: int = 1,
    eps: float = EPS,
) -> torch.Tensor:
    """mean |A_S - A_T| over N x HW x HW, computed ``images_per_chunk`` images at a time."""
    unit_s = normalise_positions(student, pool_size, pool_type, eps)
    unit_t = normalise_positions(teacher, pool_size, pool_type, eps)
    n, _, hw = unit_s.shape
    total = unit_s.new_zeros(())
    for i in range(0, n, images_per_chunk):
        s, t = unit_s[i : i + images_per_chunk], unit_t[i : i + images_per_chunk]
        if torch.is_grad_enabled() and (s.requires_grad or t.requires_grad):
            total = total + checkpoint(_abs_diff_sum, s, t, use_reentrant=False)
        else:
            total = total + _abs_diff_sum(s, t)
    return total / (n * hw * hw)


class FAKD(Loss):
    """(1-alpha) L1(S,HR) + alpha L1(S,T) + beta / rgb_range * sum over taps of L1(A_S, A_T)."""

    def __init__(
        self,
        student_taps: Sequence[str],
        teacher_taps: Sequence[str] | None,
        alpha: float,
        beta: float,
        pool_size: int,
        pool_type: Literal["max", "avg"],
        images_per_chunk: int,
        rgb_range: float,
        eps: float = EPS,
    ) -> None:
        super().__init__()
        self.student_taps, self.teacher_taps = tap_pairs(student_taps, teacher_taps)
        self.needs = Needs(teacher=True, student_taps=self.student_taps, teacher_taps=self.teacher_taps)
        self.alpha, self.beta, self.rgb_range = alpha, beta, rgb_range
        self.pool_size, self.pool_type, self.images_per_chunk = pool_size, pool_type, images_per_chunk
        self.eps = eps

    def affinity_term(self, student: Outputs, teacher: Outputs) -> torch.Tensor:
        """sum over taps of mean |A_S - A_T| (before the weight beta)."""
        terms = [
            affinity_l1(student.taps[s], teacher.taps[t], self.pool_size, self.pool_type, self.images_per_chunk, self.eps)
            for s, t in zip(self.student_taps, self.teacher_taps)
        ]
        return torch.stack(terms).sum()

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        loss = self.beta / self.rgb_range * self.affinity_term(student, teacher)
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * F.l1_loss(student.sr, batch.hr)
        if self.alpha > 0:
            loss = loss + self.alpha * F.l1_loss(student.sr, teacher.sr)
        return loss


def fakd(
    student_taps: tuple[str, ...] = DEFAULT_TAPS,
    teacher_taps: tuple[str, ...] | None = None,
    alpha: float = 0.5,
    beta: float = 10.0,
    pool_size: int = 1,
    pool_type: Literal["max", "avg"] = "max",
    images_per_chunk: int = 1,
    rgb_range: float = 255.0,
    eps: float = EPS,
) -> Loss:
    """FAKD (He et al. 2020): (1-a)L1(S,HR) + a*L1(S,T) + b*sum_taps L1 of spatial affinities; a 0.5, b 10.

    ``pool_size`` > 1 is the official pooled affinity (PSA, ``pool_type`` max or avg);
    ``images_per_chunk`` bounds memory (one chunk's (HW)^2 affinities at a time); the affinity term is
    weighted ``beta / rgb_range`` because the official pixel terms are on [0, 255] images and kdsr's on [0, 1].
    ``eps`` is added to each position's norm: 1e-8 as the official code with PSA, 1e-7 as its earlier version.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if pool_size < 1 or images_per_chunk < 1:
        raise ValueError("pool_size and images_per_chunk must be >= 1")
    if rgb_range <= 0:
        raise ValueError(f"rgb_range must be > 0, got {rgb_range}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return FAKD(student_taps, teacher_taps, alpha, beta, pool_size, pool_type, images_per_chunk, rgb_range, eps)
