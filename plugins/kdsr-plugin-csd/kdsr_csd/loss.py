"""CSD's contrastive loss (Wang et al., IJCAI 2021; official ``loss/contrast_loss.py``, methods.md 1.2).

For VGG-19 layers j (relu1_1..relu5_1) with weights lambda_j:

    CL = sum_j lambda_j * d(phi_j(S), phi_j(T)) / (sum_k d(phi_j(S), phi_j(N_k)) + 1e-7)

with S the student branch's SR (anchor), T the teacher branch's SR (positive, detached by default), N_k
bicubic-upsampled LR images (negatives) and d the mean absolute difference over the batch. VGG sees
[0, 255] images without ImageNet normalisation, as the official code does (``normalize: true`` for the
usual [0, 1] mean/std input). ``vgg_precision: bf16`` runs the frozen VGG under bfloat16 autocast
(distances stay float32): the VGG passes are most of a CSD step, and bf16 makes them cheaper where the
hardware has bf16 matrix units (AMX, tensor cores).
"""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from kdsr import Batch, KdsrError, Loss, Needs, Outputs

from kdsr_csd.vgg import vgg19_features


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFICIAL_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

# Features of the negatives, per feature extractor: one entry, the latest step's. Several CSD terms of a
# step (a Pro-CSD chain) share the extractor and the step's ``batch.bicubic``, so they share this pass.
_NEGATIVES: weakref.WeakKeyDictionary[nn.Module, tuple[torch.Tensor, tuple, list[torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


class ContrastiveLoss(Loss):
    """Pulls the student's VGG features towards the teacher branch's and pushes them from bicubic negatives.

    ``features`` maps a batch of images (already scaled for it) to the list of feature maps the layer
    weights apply to; it is frozen and held outside the module's children, so it is neither trained nor
    written into checkpoints.

    ``vgg_precision``: ``bf16`` computes the feature maps under bfloat16 autocast, ``fp32`` (official) in float32.

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
    ) -> None:
        super().__init__()
        self.__dict__["features"] = features  # not a child module: frozen, shared, never checkpointed
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.num_negatives, self.negatives = num_negatives, negatives
        self.detach_teacher, self.normalize, self.eps = detach_teacher, normalize, eps
        self.vgg_precision = vgg_precision

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None and batch.bicubic is not None
        k, b = self.num_negatives, student.sr.shape[0]
        if (self.negatives == "batch" and b < k) or (self.negatives == "other" and b <= k):
            need = f"at least {k}" if self.negatives == "batch" else f"more than {k}"
            raise KdsrError(f"csd loss: negatives '{self.negatives}' needs a batch of {need} images (num_negatives {k}), got {b}")
        self._follow(student.sr)
        anchor = self._features(student.sr)
        with torch.set_grad_enabled(not self.detach_teacher and torch.is_grad_enabled()):
            positive = self._features(teacher.sr)
        negative = self._negative_features(batch.bicubic)
        loss = student.sr.new_zeros(())
        for weight, a, p, n in zip(self.layer_weights, anchor, positive, negative, strict=True):
            d_pos = (a - p).abs().mean()
            if self.negatives == "batch":
                d_neg = sum((a - n[i : i + 1]).abs().mean() for i in range(k))
            else:
                d_neg = sum((a - n.roll(-i, dims=0)).abs().mean() for i in range(1, k + 1))
            loss = loss + weight * d_pos / (d_neg + self.eps)
        return loss

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
            f"detach_teacher={self.detach_teacher}, normalize={self.normalize}, vgg_precision={self.vgg_precision}"
        )


def csd(
    num_negatives: int = 10,
    negatives: Literal["batch", "other"] = "batch",
    layer_weights: tuple[float, ...] = OFFICIAL_LAYER_WEIGHTS,
    detach_teacher: bool = True,
    normalize: bool = False,
    vgg_weights: Path | None = None,
    vgg_precision: Literal["fp32", "bf16"] = "fp32",
) -> Loss:
    """CSD contrastive loss (Wang et al. 2021): VGG-19 distance to the teacher branch over the summed distances to K bicubic negatives.

    Defaults are the official code's: K = 10 negatives from the batch, layer weights 1/32, 1/16, 1/8, 1/4, 1
    on relu1_1..relu5_1, teacher detached, [0, 255] input. ``vgg_weights``: an ImageNet VGG-19 state dict
    (torchvision or timm format); without it the feature space is random (a warning says so).
    ``vgg_precision: bf16`` runs VGG under bfloat16 autocast: cheaper on bf16 hardware, loss equal to ~1%.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got {num_negatives}")
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
    return ContrastiveLoss(features, layer_weights, num_negatives, negatives, detach_teacher, normalize, vgg_precision=vgg_precision)
