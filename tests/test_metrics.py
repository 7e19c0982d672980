"""PSNR / SSIM follow the literature's protocol: checked against scikit-image configured the same way."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from kdsr.errors import KdsrError
from kdsr.metrics import psnr, quantize, rgb_to_y, ssim
from kdsr.registry import Registry

SET5 = Path("/work/shared/data/sr/Set5")


def y_numpy(img: torch.Tensor) -> np.ndarray:
    """Independent BT.601 Y (MATLAB rgb2ycbcr) of a 3xHxW [0, 1] tensor, as HxW float64 on [16, 235]."""
    r, g, b = img.double().numpy()
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b)


def reference(sr: torch.Tensor, hr: torch.Tensor, shave: int, y_channel: bool = True) -> tuple[float, float]:
    """scikit-image's PSNR / SSIM on the shaved images (Gaussian window sigma 1.5, population covariance)."""
    if y_channel:
        a, b, axis = y_numpy(sr), y_numpy(hr), None
    else:
        a, b, axis = sr.double().numpy().transpose(1, 2, 0) * 255, hr.double().numpy().transpose(1, 2, 0) * 255, -1
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    p = peak_signal_noise_ratio(b, a, data_range=255)
    s = structural_similarity(
        b, a, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=axis
    )
    return p, s


def smooth_pair(h: int = 48, w: int = 40, noise: float = 0.04, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    hr = torch.stack([0.5 + 0.4 * torch.sin(0.13 * xx * (c + 1) + 0.07 * yy + c) for c in range(3)])
    hr = quantize(hr)
    sr = quantize(hr + noise * torch.randn(hr.shape, generator=g, dtype=torch.float64))
    return sr.float(), hr.float()


def test_y_coefficients_by_hand() -> None:
    img = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.25, 1.0], [0.0, 0.0, 1.0, 1.0]]).view(3, 1, 4)
    y = rgb_to_y(img.double())
    assert y.shape == (1, 1, 4)
    expected = [81.481, 16.0, 16 + 32.7405 + 32.13825 + 24.966, 235.0]
    assert y.flatten().tolist() == pytest.approx(expected, abs=1e-9)
    batch = rgb_to_y(img.double().unsqueeze(0).repeat(2, 1, 1, 1))
    assert batch.shape == (2, 1, 1, 4) and torch.equal(batch[1], y)


def test_y_is_not_rounded() -> None:
    y = rgb_to_y(torch.full((3, 1, 1), 0.5, dtype=torch.float64))
    assert y.item() == pytest.approx(125.5)


def test_quantize_clamps_and_rounds_to_8_bits() -> None:
    x = torch.tensor([-0.2, 0.0, 0.31, 100.4 / 255, 1.7])
    q = quantize(x)
    assert q.tolist() == pytest.approx([0.0, 0.0, 79 / 255, 100 / 255, 1.0])
    assert torch.equal(quantize(q), q)


@pytest.mark.parametrize("shave", [0, 2, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_skimage_on_synthetic_images(shave: int, seed: int) -> None:
    sr, hr = smooth_pair(seed=seed)
    ref_p, ref_s = reference(sr, hr, shave)
    assert psnr(sr, hr, shave) == pytest.approx(ref_p, abs=0.01)
    assert ssim(sr, hr, shave) == pytest.approx(ref_s, abs=1e-4)


def test_matches_skimage_in_rgb_mode() -> None:
    sr, hr = smooth_pair(noise=0.08, seed=3)
    ref_p, ref_s = reference(sr, hr, 3, y_channel=False)
    assert psnr(sr, hr, 3, y_channel=False) == pytest.approx(ref_p, abs=0.01)
    assert ssim(sr, hr, 3, y_channel=False) == pytest.approx(ref_s, abs=1e-4)
    assert psnr(sr, hr, 3, y_channel=False) != pytest.approx(psnr(sr, hr, 3), abs=0.01)


def set5_images() -> list[Path]:
    return sorted(SET5.glob("*.png")) if SET5.is_dir() else []


@pytest.mark.skipif(not set5_images(), reason=f"{SET5} not available")
@pytest.mark.parametrize("scale", [2, 4])
def test_matches_skimage_on_set5(scale: int) -> None:
    from PIL import Image

    for path in set5_images():
        arr = np.asarray(Image.open(path).convert("RGB"))
        h, w = arr.shape[0] // scale * scale, arr.shape[1] // scale * scale
        hr = torch.from_numpy(arr[:h, :w].copy()).permute(2, 0, 1).float() / 255
        lr = F.interpolate(hr[None], scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
        sr = quantize(F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False)[0])
        ref_p, ref_s = reference(sr, hr, scale)
        got_p, got_s = psnr(sr, hr, scale), ssim(sr, hr, scale)
        assert 20 < got_p < 45, path.name
        assert got_p == pytest.approx(ref_p, abs=0.01), path.name
        assert got_s == pytest.approx(ref_s, abs=1e-4), path.name


def test_shave_ignores_the_border() -> None:
    hr = quantize(torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(0)))
    sr = hr.clone()
    sr[:, :4, :] = 1 - sr[:, :4, :]  # damage only the four top rows
    assert psnr(sr, hr, shave=4) == math.inf
    assert ssim(sr, hr, shave=4) == pytest.approx(1.0)
    assert psnr(sr, hr, shave=3) < 30
    assert ssim(sr, hr, shave=1) < 0.999


def test_identical_images_give_inf_psnr_and_unit_ssim() -> None:
    _, hr = smooth_pair()
    assert psnr(hr, hr.clone(), 2) == float("inf")
    assert ssim(hr, hr.clone(), 2) == pytest.approx(1.0, abs=1e-12)


def test_shape_mismatch_names_both_shapes() -> None:
    sr, hr = torch.rand(3, 32, 32), torch.rand(3, 30, 32)
    for fn in (psnr, ssim):
        with pytest.raises(KdsrError, match=r"\(3, 32, 32\).*\(3, 30, 32\)"):
            fn(sr, hr, 2)


def test_bad_inputs_are_user_errors() -> None:
    img = torch.rand(3, 20, 20)
    with pytest.raises(KdsrError, match="shave"):
        psnr(img, img, -1)
    with pytest.raises(KdsrError, match="11x11"):
        ssim(img, img, 5)  # 10x10 left
    with pytest.raises(KdsrError, match="3xHxW"):
        psnr(img[:1], img[:1], 0)
    with pytest.raises(KdsrError, match="3xHxW"):
        rgb_to_y(img[:2])


def test_float32_and_float64_inputs_agree() -> None:
    sr, hr = smooth_pair()
    assert psnr(sr, hr, 2) == pytest.approx(psnr(sr.double(), hr.double(), 2), abs=1e-4)
    assert ssim(sr, hr, 2) == pytest.approx(ssim(sr.double(), hr.double(), 2), abs=1e-6)


def builtin_metrics() -> dict[str, typing.Callable]:
    import kdsr.builtin.metrics as plugin

    found: dict[str, typing.Callable] = {}
    plugin.register_metrics(register=lambda name, factory, **_: found.__setitem__(name, factory))
    return found


def test_builtin_registers_psnr_and_ssim() -> None:
    found = builtin_metrics()
    assert set(found) == {"psnr", "ssim"}
    for factory in found.values():
        hints = typing.get_type_hints(factory)  # the registry validates options from these
        assert hints["shave"] == int | typing.Literal["scale", "scale+6"] and hints["y_channel"] is bool
        summary = factory.__doc__.splitlines()[0]
        assert "Y channel" in summary and "`scale`" in summary


def test_builtin_factories_through_the_registry() -> None:
    reg = Registry("metric")
    for name, factory in builtin_metrics().items():
        reg.add(name, factory, "builtin.metrics")
    sr, hr = smooth_pair(seed=5)
    assert reg.create("psnr")(sr, hr, 3) == psnr(sr, hr, 3)
    assert reg.create("ssim")(sr, hr, 3) == ssim(sr, hr, 3)
    assert reg.create("psnr", {"shave": 0})(sr, hr, 3) == psnr(sr, hr, 0)
    assert reg.create("ssim", {"y_channel": False})(sr, hr, 2) == ssim(sr, hr, 2, y_channel=False)
    with pytest.raises(KdsrError, match="unknown option 'shve'"):
        reg.create("psnr", {"shve": 1})
    with pytest.raises(KdsrError, match="shave"):
        reg.create("psnr", {"shave": -2})
