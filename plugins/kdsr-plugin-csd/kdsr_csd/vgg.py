"""The frozen VGG-19 feature extractor of CSD's contrastive loss (timm's ``vgg19``, ImageNet weights from a file)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from kdsr import KdsrError
from kdsr.weights import read_state_dict

RELU_INDICES = (1, 6, 11, 20, 29)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in vgg19.features


class LayerFeatures(nn.Module):
    """Runs ``features`` (a Sequential) and returns the outputs of the layers at ``indices``."""

    def __init__(self, features: nn.Sequential, indices: tuple[int, ...] = RELU_INDICES) -> None:
        super().__init__()
        bounds = (0, *(i + 1 for i in indices))
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(bounds, bounds[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out


@functools.lru_cache(maxsize=4)
def vgg19_features(weights: Path | None) -> LayerFeatures:
    """Frozen VGG-19 relu1_1..relu5_1 features, built once per weights file and shared by every loss.

    ``weights``: a torchvision (``vgg19-dcbb9e9d.pth``) or timm state dict; only ``features.*`` is read.
    Without weights the network keeps its random initialisation (the ``csd`` factory warns).
    """
    import timm  # lazy: importing timm costs seconds of CLI start-up

    with torch.device("meta"):  # skip initialising the 120 M classifier parameters we never use
        model = timm.create_model("vgg19", pretrained=False)
    features = model.features[: RELU_INDICES[-1] + 1]
    features.to_empty(device="cpu")
    if weights is None:  # torchvision's VGG initialisation, from a fixed seed: the same random space every run
        generator = torch.Generator().manual_seed(0)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                nn.init.zeros_(m.bias)
    else:
        state = read_state_dict(weights)
        if not any(k.startswith("features.") for k in state):
            state = {f"features.{k}": v for k, v in state.items()}
        wanted = {f"features.{k}": v for k, v in features.state_dict().items()}
        missing = [k for k in wanted if k not in state]
        if missing:
            raise KdsrError(
                f"vgg_weights '{weights}' is not a VGG-19 state dict: missing {', '.join(missing[:3])}"
                f"{' and more' if len(missing) > 3 else ''} (expected torchvision/timm keys features.N.weight)"
            )
        bad = [k for k in wanted if tuple(state[k].shape) != tuple(wanted[k].shape)]
        if bad:
            raise KdsrError(f"vgg_weights '{weights}' does not match VGG-19 at {', '.join(bad[:3])} (a VGG-16 file?)")
        features.load_state_dict({k[len("features."):]: state[k] for k in wanted})
    extractor = LayerFeatures(features).eval()
    extractor.requires_grad_(False)
    return extractor
