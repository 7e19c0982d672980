"""CSD's contrastive loss (Wang et al., IJCAI 2021; official ``loss/contrast_loss.py``, methods.md 1.2).

For VGG-19 layers j (relu1_1..relu5_1) with weights lambda_j, ``distance: l1`` (official default,
``ContrastLoss.L1_forward``):

    CL = sum_j lambda_j * d(phi_j(S), phi_j(T)) / (sum_k d(phi_j(S), phi_j(N_k)) + 1e-7)

with S the student branch's SR (anchor), T the teacher branch's SR (positive, detached by default), N_k
bicubic-upsampled LR images (negatives) and d the mean absolute difference over the batch.
``distance: cos`` is the official ``d_func='cos'`` (``ContrastLoss.cos_forward`` / ``calc_cos_stu_neg``):

    CL = sum_j lambda_j * -log(exp(c_pos) / (exp(c_neg) + 1e-7))

with c_pos the cosine similarity of phi_j(S) and phi_j(T) taken across the batch (``dim=0``) at every
feature position, then averaged, and c_neg = sum_k mean_b cos(phi_j(S_b), phi_j(N_k)) / (C*H*W): the
official code averages the products of the per-image unit vectors over all their entries, so the summed
cosines come out divided by the feature size.

VGG sees [0, 255] images without ImageNet normalisation, as the official code does (``normalize: true`` for
the usual [0, 1] mean/std input). ``vgg_precision: bf16`` runs the frozen VGG under bfloat16 autocast
(distances stay float32): the VGG passes are most of a CSD step, and bf16 makes them cheaper where the
hardware has bf16 matrix units (AMX, tensor cores).

Cost: the K negative L1 distances are one batched ``torch.cdist(p=1)`` per layer (a fused sum of |a - n|
over all anchor/negative pairs, with a fused backward), not K full-size passes each with its own
autograd graph (whose backward, with channels_last features, also converted layouts). The features are
read in their memory order and cut into pieces so the float32 sums stay as accurate as ``mean``; channels_last
and contiguous features then cost the same.
"""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdsr import Batch, KdsrError, Loss, Needs, Outputs

from kdsr_csd.vgg import vgg19_features

if TYPE_CHECKING:
    from kdsr.config import RunConfig, StageConfig


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

# Features of the negatives, per feature extractor: one entry, the latest step's. Several CSD terms of a
# step (a Pro-CSD chain) share the extractor and the step's ``batch.bicubic``, so they share this pass.
_NEGATIVES: weakref.WeakKeyDictionary[nn.Module, tuple[torch.Tensor, tuple, list[torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _in_memory_order(a: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``n`` with their dims in ``a``'s memory order (channels_last: N, H, W, C), ``n`` laid out like ``a``.

    The distances sum over each image's values, whose order does not matter, so a channels_last anchor is
    read as its (N, H, W, C) view instead of being converted to the contiguous layout (and back for its gradient).
    """
    if a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last):
        return a.permute(0, 2, 3, 1), n.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    return a, n


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(images x values)."""
    return x.reshape(x.shape[0], -1)


def _pieces(x: torch.Tensor) -> torch.Tensor:
    """(P x images x values/P), P the outermost per-image dim: ``cdist`` then sums P short stretches that
    ``sum(0)`` adds up, which keeps a float32 distance as accurate as ``mean`` (one vector-lane sum over all
    C*H*W values drifts by ~1e-5)."""
    return x.reshape(x.shape[0], x.shape[1] if x.dim() > 2 else 1, -1).transpose(0, 1)


class ContrastiveLoss(Loss):
    """Pulls the student's VGG features towards the teacher branch's and pushes them from bicubic negatives.

    ``features`` maps a batch of images (already scaled for it) to the list of feature maps the layer
    weights apply to; it is frozen and held outside the module's children, so it is neither trained nor
    written into checkpoints.

    ``vgg_precision``: ``bf16`` computes the feature maps under bfloat16 autocast, ``fp32`` (official) in float32.

    ``distance``: ``l1`` (official default) or ``cos`` (official ``d_func='cos'``), see the module docstring.

    ``negatives``: ``batch`` (official) uses the first K images of the batch as negatives of every anchor
    (for the first K anchors that includes their own input); ``other`` gives anchor i the images i+1 ...
    i+K of the batch (cyclically), never its own, and needs a batch larger than K.
    """

    needs = Needs(teacher=True, bicubic=True)

    def __init__(
        self,
        features: nn.Module,
        layer_weights: tuple[float, ...] = OFFICIAL_LAYER_WEIGHTS,
        num_negatives: int = 10,
        negatives: Literal["batch", "other"] = "batch",
        detach_teacher: bool = True,
        normalize: bool = False,
        eps: float = 1e-7,
        vgg_precision: Literal["fp32", "bf16"] = "fp32",
        distance: Literal["l1", "cos"] = "l1",
    ) -> None:
        super().__init__()
        self.__dict__["features"] = features  # not a child module: frozen, shared, never checkpointed
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.num_negatives, self.negatives = num_negatives, negatives
        self.detach_teacher, self.normalize, self.eps = detach_teacher, normalize, eps
        self.vgg_precision, self.distance = vgg_precision, distance

    def check_config(self, config: RunConfig, stage: StageConfig) -> None:
        """The negatives come from the batch: refuse a ``data.batch_size`` too small before the run starts."""
        problem = self._batch_problem(config.data.batch_size)
        if problem:
            raise ValueError(f"{problem}; raise data.batch_size or lower num_negatives")

    def _batch_problem(self, b: int) -> str | None:
        k = self.num_negatives
        if (self.negatives == "batch" and b < k) or (self.negatives == "other" and b <= k):
            need = f"at least {k}" if self.negatives == "batch" else f"more than {k}"
            return f"negatives '{self.negatives}' needs a batch of {need} images (num_negatives {k}), got {b}"
        return None

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None and batch.bicubic is not None
        k, problem = self.num_negatives, self._batch_problem(student.sr.shape[0])
        if problem:
            raise KdsrError(f"csd loss: {problem}")
        self._follow(student.sr)
        anchor = self._features(student.sr)
        with torch.set_grad_enabled(not self.detach_teacher and torch.is_grad_enabled()):
            positive = self._features(teacher.sr)
        negative = self._negative_features(batch.bicubic)
        contrast = self._l1 if self.distance == "l1" else self._cos
        loss = student.sr.new_zeros(())
        for weight, a, p, n in zip(self.layer_weights, anchor, positive, negative, strict=True):
            loss = loss + weight * contrast(a, p, n)
        return loss

    def _pairs(self, per_pair: torch.Tensor) -> torch.Tensor:
        """Sum of a (B x negatives) table of per-pair values over each anchor's K negatives."""
        if self.negatives == "batch":
            return per_pair.sum()
        b = per_pair.shape[0]
        own = torch.arange(b, device=per_pair.device)[:, None]
        picked = (own + torch.arange(1, self.num_negatives + 1, device=per_pair.device)) % b  # i+1 .. i+K
        return per_pair.gather(1, picked).sum()

    def _l1(self, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Official L1 ratio: mean|a - p| / (sum_k mean|a - n_k| + eps), the K distances in one cdist."""
        d_pos = (a - p).abs().mean()
        a_, n_ = _in_memory_order(a, n)
        d_neg = self._pairs(torch.cdist(_pieces(a_), _pieces(n_), p=1).sum(0)) / a.numel()
        return d_pos / (d_neg + self.eps)

    def _cos(self, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """Official cos: -log(exp(c_pos) / (exp(c_neg) + eps)), c_pos across the batch, c_neg per image."""
        c_pos = torch.cosine_similarity(p, a, dim=0).mean()
        rows_a, rows_n = (F.normalize(_rows(x), dim=1) for x in _in_memory_order(a, n))
        c_neg = self._pairs(rows_a @ rows_n.T) / rows_a.numel()
        return -torch.log(torch.exp(c_pos) / (torch.exp(c_neg) + self.eps))

    def _negative_features(self, bicubic: torch.Tensor) -> list[torch.Tensor]:
        """VGG features of the negatives: one batched pass per step, shared by all anchors and CSD terms."""
        images = bicubic[: self.num_negatives] if self.negatives == "batch" else bicubic
        key = (images.shape[0], self.normalize, self.vgg_precision)
        cached = _NEGATIVES.get(self.features)
        if cached is not None and cached[0] is bicubic and cached[1] == key:
            return cached[2]
        with torch.no_grad():
            feats = self._features(images)
        _NEGATIVES[self.features] = (bicubic, key, feats)
        return feats

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        bf16 = self.vgg_precision == "bf16"
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            feats = self.features(self._scaled(images))
        return [f.float() for f in feats] if bf16 else feats

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return x * 255.0  # official: raw [0, 255] input
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def _follow(self, x: torch.Tensor) -> None:
        """Move the (unregistered) feature extractor to the images' device and dtype."""
        p = next(self.features.parameters(), None)
        if p is not None and (p.device != x.device or p.dtype != x.dtype):
            self.features.to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return (
            f"layer_weights={self.layer_weights}, num_negatives={self.num_negatives}, negatives={self.negatives}, "
            f"detach_teacher={self.detach_teacher}, normalize={self.normalize}, vgg_precision={self.vgg_precision}, "
            f"distance={self.distance}"
        )


def csd(
    num_negatives: int = 10,
    negatives: Literal["batch", "other"] = "batch",
    layer_weights: tuple[float, ...] = OFFICIAL_LAYER_WEIGHTS,
    detach_teacher: bool = True,
    normalize: bool = False,
    vgg_weights: Path | None = None,
    vgg_precision: Literal["fp32", "bf16"] = "fp32",
    distance: Literal["l1", "cos"] = "l1",
) -> Loss:
    """CSD contrastive loss (Wang et al. 2021): VGG-19 distance to the teacher branch over the summed distances to K bicubic negatives.

    Defaults are the official code's: K = 10 negatives from the batch, layer weights 1/32, 1/16, 1/8, 1/4, 1
    on relu1_1..relu5_1, teacher detached, [0, 255] input. ``vgg_weights``: an ImageNet VGG-19 state dict
    (torchvision or timm format); without it the feature space is random (a warning says so).
    ``vgg_precision: bf16`` runs VGG under bfloat16 autocast: cheaper on bf16 hardware, loss equal to ~1%.
    ``distance: cos`` is the official ``d_func='cos'`` variant (-log of exponentiated cosine similarities).
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
    if distance not in ("l1", "cos"):
        raise ValueError(f"distance must be 'l1' or 'cos', got '{distance}'")
    if len(layer_weights) != 5:
        raise ValueError(f"layer_weights needs 5 values (relu1_1..relu5_1), got {len(layer_weights)}")
    if vgg_weights is None:
        message = (
            "csd loss: no vgg_weights given, so VGG-19 has RANDOM weights and the contrastive loss measures "
            "distances in a random feature space, not CSD's perceptual space; set the csd loss option "
            "vgg_weights to an ImageNet VGG-19 state dict (torchvision or timm format)"
        )
        warnings.warn(message, UserWarning, stacklevel=2)  # shown once per process by Python's default filter
    features = vgg19_features(vgg_weights)
    loss = ContrastiveLoss(features, layer_weights, num_negatives, negatives, detach_teacher, normalize, vgg_precision=vgg_precision, distance=distance)
    if vgg_weights is None:  # the report says so next to the numbers, not only stderr
        loss.caveats = ("csd loss ran with a RANDOM VGG-19 (no vgg_weights): its contrastive term is not CSD's perceptual loss",)
    return loss
