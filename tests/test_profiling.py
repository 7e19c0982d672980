"""Params, Multi-Adds and latency: hand-computed counts, and the meta-device trace equals a real one."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsr.errors import KdsrError
from kdsr.profiling import (
    HR_720P,
    _convs_as_aten_convolution,
    count_macs,
    count_params,
    lr_size_for,
    measure_latency,
    profile_macs,
)


class TinySR(nn.Module):
    """head conv -> residual body conv -> conv + PixelShuffle(2) -> tail conv at HR."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.upsampler = nn.Sequential(nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2))
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        h = h + self.body(h)
        return self.tail(self.upsampler(h))


def conv_macs(h: int, w: int, cin: int, cout: int, k: int) -> int:
    return h * w * cin * cout * k * k


def test_params_by_hand() -> None:
    c = 8
    expected = (3 * c * 9 + c) + (c * c * 9 + c) + (c * 4 * c * 9 + 4 * c) + (c * 3 * 9 + 3)
    assert count_params(TinySR(c)) == expected == 3363

    shared = nn.Conv2d(4, 4, 1)
    net = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2, bias=False))
    assert count_params(net) == (4 * 4 + 4) + 4 * 2


def test_macs_equal_the_analytic_conv_sum() -> None:
    h, w, c = 10, 14, 8
    per_module = {
        "head": conv_macs(h, w, 3, c, 3),
        "body": conv_macs(h, w, c, c, 3),
        "upsampler": conv_macs(h, w, c, 4 * c, 3),
        "tail": conv_macs(2 * h, 2 * w, c, 3, 3),  # at the HR resolution, after the shuffle
    }
    result = profile_macs(TinySR(c), (h, w))
    assert result.total == sum(per_module.values()) == count_macs(TinySR(c), (h, w))
    assert result.by_module == per_module
    assert result.by_operator == {"conv": result.total}
    assert result.skipped_ops == {"aten::add": 1, "aten::pixel_shuffle": 1}  # no multiply-adds; stated, not hidden
    assert result.traced_on == "meta" and result.lr_size == (h, w)


def test_meta_trace_equals_real_trace_on_a_small_input() -> None:
    model = Mixed().eval()
    for size in [(12, 16), (14, 18)]:
        real = profile_macs(model, size, meta=False)
        meta = profile_macs(model, size)
        assert (meta.traced_on, real.traced_on) == ("meta", "cpu")
        assert meta.total == real.total > 0
        assert meta.by_module == real.by_module
        assert meta.by_operator == real.by_operator
        assert meta.skipped_ops == real.skipped_ops


class Mixed(nn.Module):
    """Conv variants (same/valid/strided/dilated/grouped/transposed/1-D/reflect), attention, norms, CA."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.same_odd = nn.Conv2d(3, c, 3, padding="same")
        self.same_even = nn.Conv2d(c, c, 4, padding="same")
        self.dilated = nn.Conv2d(c, c, 3, padding=2, dilation=2, groups=4, padding_mode="reflect")
        self.ca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1), nn.Sigmoid())
        self.bn = nn.BatchNorm2d(c)
        self.norm = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)
        self.valid = nn.Conv1d(c, c, 3, padding="valid")
        self.tail = nn.Sequential(nn.Conv2d(c, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dilated(self.same_even(self.same_odd(x)))
        h = self.bn(h * self.ca(h))
        b, c, hh, ww = h.shape
        q, k, v = self.qkv(self.norm(h.flatten(2).transpose(1, 2))).chunk(3, -1)
        h = h + ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, c, hh, ww)
        h = h + self.up(self.down(h))
        h = h + F.pad(self.valid(h.flatten(2)), (1, 1)).view(b, c, hh, ww)
        h = h + torch.einsum("bchw,dc->bdhw", h, torch.ones(c, c, device=h.device))
        return self.tail(h) + F.interpolate(x, scale_factor=2, mode="bilinear")


def test_patched_convolutions_compute_the_same_values() -> None:
    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.rand(1, 3, 12, 16)
    with torch.no_grad():
        expected = model(x)
        with _convs_as_aten_convolution(True):
            got = model(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert F.conv2d is torch.conv2d  # restored


def test_forward_kwargs_are_passed() -> None:
    class Slim(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)

        def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
            n = int(16 * width)
            return F.conv2d(x, self.conv.weight[:n], self.conv.bias[:n], padding=1)

    full, half = (count_macs(Slim(), (8, 8), {"width": wd}) for wd in (1.0, 0.5))
    assert (full, half) == (conv_macs(8, 8, 3, 16, 3), conv_macs(8, 8, 3, 8, 3))


def test_edsr_sized_model_at_720p_is_fast() -> None:
    """EDSR 32x256 x2 for a 1280x720 output: 9,384.7 G Multi-Adds (methods.md §8), counted without computing."""

    class Res(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(True), nn.Conv2d(c, c, 3, padding=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) * 0.1

    c, n = 256, 32
    with torch.device("meta"):  # as `kdsr profile` builds models: no memory, no init time
        edsr = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), *[Res(c) for _ in range(n)], nn.Conv2d(c, c, 3, padding=1),
            nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.Conv2d(c, 3, 3, padding=1),
        )
    lh, lw = lr_size_for(HR_720P, 2)
    expected = (
        conv_macs(lh, lw, 3, c, 3) + (2 * n + 1) * conv_macs(lh, lw, c, c, 3)
        + conv_macs(lh, lw, c, 4 * c, 3) + conv_macs(2 * lh, 2 * lw, c, 3, 3)
    )
    start = time.perf_counter()
    assert count_macs(edsr, (lh, lw)) == expected == 9_384_748_646_400
    assert time.perf_counter() - start < 10


def test_fallback_to_real_tensors_when_meta_cannot_run() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * (2.0 if x.max().item() >= 0 else 1.0)  # .item() needs data

    model = DataDependent().train()
    with pytest.warns(RuntimeWarning, match="meta-device tracing .* failed"):
        result = profile_macs(model, (6, 6))
    assert result.traced_on == "cpu" and result.total == conv_macs(6, 6, 3, 4, 3)
    assert model.training  # the user's model is left as it was
    with torch.device("meta"):
        on_meta = DataDependent()
    with pytest.raises(KdsrError, match="meta device"):
        profile_macs(on_meta, (6, 6))


def test_a_meta_trace_that_loses_a_convolution_is_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    import kdsr.profiling as profiling

    def shape_only(n: int, transposed: bool):  # a "convolution" the tracer cannot see as one
        return lambda input, weight, *args, **kwargs: input.new_zeros(1, weight.shape[0], *input.shape[2:])

    monkeypatch.setattr(profiling, "_aten_conv", shape_only)
    with pytest.warns(RuntimeWarning, match=r"recorded no Multi-Adds for body\.0, head, tail"):
        result = profile_macs(TinySR(), (4, 4))
    assert result.traced_on == "cpu" and result.total == profile_macs(TinySR(), (4, 4), meta=False).total


def test_profiling_does_not_touch_the_model() -> None:
    model = TinySR().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tracer / fvcore chatter is silenced on purpose
        profile_macs(model, (5, 7))
    assert model.training and all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lr_size_for_720p_output() -> None:
    assert lr_size_for(scale=2) == (360, 640)
    assert lr_size_for(HR_720P, 3) == (240, 427)  # ceil: the x3 output covers 1280 columns
    assert lr_size_for(scale=4) == (180, 320)
    assert lr_size_for((32, 30), 4) == (8, 8)
    with pytest.raises(KdsrError):
        lr_size_for(scale=0)
    with pytest.raises(KdsrError):
        profile_macs(TinySR(), (0, 4))


def test_latency_reports_its_conditions() -> None:
    model = TinySR().train()
    lat = measure_latency(model, torch.rand(1, 3, 16, 16), repeats=3, warmup=1)
    assert lat.median_s > 0 and lat.p90_s >= lat.median_s
    assert (lat.repeats, lat.threads, lat.device) == (3, torch.get_num_threads(), "cpu")
    assert model.training  # measured in eval mode, restored afterwards
    calls = []
    lat = measure_latency(lambda x: calls.append(x.shape), torch.zeros(2), repeats=4, warmup=2)
    assert len(calls) == 6 and lat.repeats == 4
    with pytest.raises(KdsrError):
        measure_latency(model, torch.rand(1, 3, 8, 8), repeats=0)
