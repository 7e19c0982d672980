"""The pieces of FACD's feature-domain contrastive loss, as plain functions of tensors.

Features become unit vectors (``embed``); an anchor i is pulled to its positive and pushed from the
negatives of the *other* batch items k != i, either with InfoNCE or with CSD's distance ratio.
Every function returns one value per batch item, so the adaptive rule can select items.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

RATIO_EPS = 1e-7  # as CSD's contrastive loss


def embed(feat: torch.Tensor, representation: Literal["pooled", "position"]) -> torch.Tensor:
    """N x C x H x W -> N x D unit vectors.

    ``pooled``: spatial mean, then L2-normalised (D = C). ``position``: each position's C-vector
    L2-normalised, flattened and divided by sqrt(HW) (D = C*HW), so a dot product of two embeddings
    is the mean over positions of the per-position cosine similarity.
    """
    if representation == "pooled":
        return F.normalize(feat.mean(dim=(2, 3)), dim=1)
    hw = feat.shape[2] * feat.shape[3]
    return F.normalize(feat, dim=1).flatten(1) / hw**0.5


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per item i: -log( e^{a_i.p_i/t} / (e^{a_i.p_i/t} + sum_{k != i} e^{a_i.n_k/t}) ), all N x D unit vectors."""
    pos = (anchor * positive).sum(dim=1, keepdim=True) / temperature
    neg = anchor @ negatives.T / temperature
    eye = torch.eye(len(anchor), dtype=torch.bool, device=anchor.device)
    neg = neg.masked_fill(eye, float("-inf"))
    return torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos.squeeze(1)


def distance_ratio(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Per item i: d(a_i, p_i) / (sum_{k != i} d(a_i, n_k) + eps), d = mean absolute difference (CSD's form)."""
    dim = anchor.shape[1]
    d_pos = (anchor - positive).abs().mean(dim=1)
    d_neg = torch.cdist(anchor, negatives, p=1) / dim
    d_neg = d_neg * (1 - torch.eye(len(anchor), dtype=anchor.dtype, device=anchor.device))
    return d_pos / (d_neg.sum(dim=1) + RATIO_EPS)


def distil_mask(
    student_sr: torch.Tensor,
    teacher_sr: torch.Tensor,
    hr: torch.Tensor,
    rule: Literal["teacher_better", "always"],
    margin: float = 0.0,
) -> torch.Tensor:
    """Which batch items to distil (float 0/1, length N).

    ``teacher_better``: the teacher's SR has a lower per-item L1 to HR than the student's by more than
    ``margin``; ``always``: every item.
    """
    if rule == "always":
        return torch.ones(len(hr), device=hr.device)
    with torch.no_grad():
        err_s = (student_sr - hr).abs().mean(dim=(1, 2, 3))
        err_t = (teacher_sr - hr).abs().mean(dim=(1, 2, 3))
        return (err_t < err_s - margin).float()
