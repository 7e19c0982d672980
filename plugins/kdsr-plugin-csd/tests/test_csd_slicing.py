"""CSSR-Net: a width-w branch is exactly an independent width-w network made of the weight slices.

Independent networks come from the zoo with the narrow width option, their tensors cut from the shared
network's state dict (``csd_testing.narrow_copy``); nothing of the slicing code is reused to build them.
"""

from __future__ import annotations

import pytest
import torch

import kdsr
from kdsr.profiling import count_macs
from kdsr.weights import save_weights
from kdsr_csd import cssr
from kdsr_csd.slim import SlicedConv2d
from csd_testing import narrow_copy, prefix_slice

# backbone, full-width options, the width option's name, width, scales (x2/x4: 4C convs, x3: a 9C conv)
CASES = [
    ("edsr", {"n_resblocks": 2, "n_feats": 16, "res_scale": 0.1}, "n_feats", 0.25, (3, 4)),
    ("edsr_baseline", {"n_resblocks": 1, "n_feats": 12}, "n_feats", 0.5, (2,)),
    ("rcan", {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 32, "reduction": 8}, "n_feats", 0.25, (2,)),
    ("carn", {"n_feats": 16}, "n_feats", 0.5, (3,)),
    ("imdn", {"nf": 32, "num_modules": 2}, "nf", 0.5, (4,)),
]
MATRIX = [(*case[:4], scale) for case in CASES for scale in case[4]]


def shared(backbone: str, options: dict, scale: int, widths=(1.0, 0.5), **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    branches = cssr(None, scale, backbone, options, widths=widths, **kw)
    net = next(iter(branches.values())).model.to(torch.float64)
    for p in net.parameters():  # non-zero biases, so a wrong bias slice cannot hide
        p.data += 0.01 * torch.randn_like(p)
    return net


@pytest.mark.parametrize(("backbone", "options", "width_key", "width", "scale"), MATRIX, ids=[f"{c[0]}-x{c[4]}" for c in MATRIX])
def test_branch_equals_independent_network_of_slices(backbone, options, width_key, width, scale):
    net = shared(backbone, options, scale, widths=(1.0, width))
    small = narrow_copy(net, backbone, {**options, width_key: int(options[width_key] * width)}, scale)
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    out = net(x, width=width)
    assert out.shape == (2, 3, 7 * scale, 9 * scale)
    assert torch.equal(out, small(x))
    full = narrow_copy(net, backbone, options, scale)
    assert torch.equal(net(x), full(x))  # width 1.0 is the backbone itself



def test_carn_aligned_slicing_takes_each_concatenated_part():
    """Aligned: the 1x1 fusion over [a, b, ...] (C channels each) uses input channels [0, c) + [C, C + c) + ..."""
    c_full, width = 16, 0.25
    c = int(c_full * width)
    net = shared("carn", {"n_feats": c_full}, 2, widths=(1.0, width), concat_slicing="aligned")

    def aligned(key, full, shape):
        parts = {"c1": 2, "c2": 3, "c3": 4}.get(key.split(".")[-4]) if key.endswith("body.0.weight") else None
        if parts is None:
            return prefix_slice(key, full, shape)
        cols = torch.cat([torch.arange(i * c_full, i * c_full + c) for i in range(parts)])
        return full[:c][:, cols]

    small = narrow_copy(net, "carn", {"n_feats": c}, 2, index=aligned)
    prefix = narrow_copy(net, "carn", {"n_feats": c}, 2)
    x = torch.rand(1, 3, 6, 5, dtype=torch.float64)
    assert torch.equal(net(x, width=width), small(x))
    assert not torch.allclose(net(x, width=width), prefix(x))  # the two slicings really differ


def test_output_convs_keep_rgb_and_shuffle_channels():
    edsr = shared("edsr", CASES[0][1], 4)
    fixed = sorted(n for n, m in edsr.named_modules() if isinstance(m, SlicedConv2d) and m.fixed_out)
    assert fixed == ["tail.1"]  # the RGB tail; the x4 upsampler convs (4C) are sliced
    imdn = shared("imdn", CASES[4][1], 3)
    fixed = sorted(n for n, m in imdn.named_modules() if isinstance(m, SlicedConv2d) and m.fixed_out)
    assert fixed == ["upsampler.0"]  # 3 * 3^2 outputs that the shuffle turns into RGB


def test_state_dict_names_unchanged_and_teacher_weights_load(tmp_path):
    plain = kdsr.plugins.registry("backbone").create("rcan", CASES[2][1], scale=2)
    path = tmp_path / "teacher.safetensors"
    save_weights(plain.state_dict(), path)
    branches = cssr(None, 2, "rcan", CASES[2][1], widths=(1.0, 0.25), weights=path)
    assert list(branches) == ["w1.0", "w0.25"]
    net = branches["w0.25"].model
    assert branches["w1.0"].model is net and branches["w0.25"].kwargs == {"width": 0.25}
    assert list(net.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain.state_dict().values()))
    x = torch.rand(1, 3, 6, 6)
    assert torch.equal(net(x), plain(x))


# methods.md 1.1 (convs only, [computed]); here counted on the meta device through branch_params
@pytest.mark.parametrize(
    ("backbone", "scale", "expected"),
    [
        ("edsr", 4, {1.0: 43.09, 0.5: 10.78, 0.25: 2.70}),
        ("carn", 3, {1.0: 1.15, 0.5: 0.29}),
    ],
)
def test_params_per_width_match_methods_table(backbone, scale, expected):
    with torch.device("meta"):
        net = cssr(None, scale, backbone, {}, widths=tuple(expected))["w1.0"].model
    assert {w: round(net.branch_params(w) / 1e6, 2) for w in expected} == expected


def test_branch_params_and_macs_equal_the_independent_network():
    backbone, options, key, width, _ = CASES[2]  # RCAN: channel attention squeeze 4 -> 1
    net = shared(backbone, options, 4, widths=(1.0, width))
    small = narrow_copy(net, backbone, {**options, key: int(options[key] * width)}, 4)
    assert net.branch_params(width) == sum(p.numel() for p in small.parameters())
    assert net.branch_params(1.0) == sum(p.numel() for p in net.parameters())
    assert count_macs(net, (12, 10), {"width": width}) == count_macs(small, (12, 10))
    assert count_macs(net, (12, 10), {"width": 1.0}) > 10 * count_macs(small, (12, 10))


def test_unsupported_backbones_and_widths_fail_clearly():
    with pytest.raises(kdsr.KdsrError, match="Linear"):
        cssr(None, 2, "swinir_light", {"embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 4})
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        cssr(None, 2, "edsr_baseline", {"n_feats": 8, "n_resblocks": 1}, widths=(1.0, 1.5))
    with pytest.raises(ValueError, match="width 0.1 does not fit"):  # int(8 * 0.1) = 0 channels
        cssr(None, 2, "edsr_baseline", {"n_feats": 8, "n_resblocks": 1}, widths=(1.0, 0.1))
