"""Any CSSR width in (0, 1]: convs keep int(C w) channels, pixel-shuffle convs r^2 int(C w), attention gates
the channels they multiply; widths where C w is not whole train and export on EDSR, RCAN, CARN and IMDN."""

from __future__ import annotations

import pytest
import torch

import kdsr
from kdsr.plugins import registry
from kdsr_csd import cssr

WIDTHS = (1.0, 0.3, 0.4, 0.6, 0.7)
# 64 channels as in the issue (0.6 x 64 = 38.4); RCAN at 32 / reduction 8 keeps a 4-channel squeeze (>= 1 at 0.3)
CASES = [
    ("edsr", {"n_resblocks": 1, "n_feats": 64}, 4),
    ("rcan", {"n_resgroups": 1, "n_resblocks": 1, "n_feats": 32, "reduction": 8}, 3),
    ("carn", {"n_feats": 32}, 2),
    ("imdn", {"num_modules": 1}, 2),  # nf 64: int(64 w) >= 16 keeps IMDN's attention at every width here
]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("backbone", "options", "scale"), CASES, ids=[c[0] for c in CASES])
def test_fractional_widths_train_and_export(backbone, options, scale):
    torch.manual_seed(0)
    branches = cssr(None, scale, backbone, options, widths=WIDTHS)
    net = branches["w1.0"].model
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8 * scale, 8 * scale)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        outs = {name: branch(lr) for name, branch in branches.items()}
        assert all(o.shape == hr.shape for o in outs.values())
        loss = sum((o - hr).abs().mean() for o in outs.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    net.eval()
    for width in WIDTHS[1:]:  # and each trained width exports as the plain narrow backbone
        plain = net.to_plain(width=width)
        small = registry("backbone").create(plain.backbone, plain.options, scale=plain.scale)
        small.load_state_dict(plain.state_dict, strict=True)
        with torch.no_grad():
            assert (small.eval()(lr) - net(lr, width=width)).abs().max().item() <= 1e-6


def test_pixel_shuffle_convs_keep_whole_units():
    """EDSR x4, 64 channels at w0.6: each upsampler conv writes 4 x int(64 x 0.6) = 152 maps (int(256 x 0.6) = 153
    cannot be shuffled), the official ``width4 = int(width_mult * nf) * 4``."""
    net = cssr(None, 4, "edsr", {"n_resblocks": 1, "n_feats": 64}, widths=(1.0, 0.6))["w1.0"].model
    shapes = {k: tuple(v.shape) for k, v in net.sliced_state(0.6).items()}
    assert shapes["head.0.weight"] == (38, 3, 3, 3)
    assert shapes["tail.0.0.weight"] == shapes["tail.0.2.weight"] == (152, 38, 3, 3)
    assert shapes["tail.1.weight"] == (3, 38, 3, 3)
    x9 = cssr(None, 3, "edsr", {"n_resblocks": 1, "n_feats": 64}, widths=(1.0, 0.7))["w1.0"].model
    assert tuple(x9.sliced_state(0.7)["tail.0.0.weight"].shape) == (9 * 44, 44, 3, 3)


def test_imdn_attention_gates_the_channels_it_multiplies():
    """IMDN at w0.6: 4 distilled parts of int(16 x 0.6) = 9 give a 36-channel map, so the excite conv of its
    attention writes 36 channels (int(64 x 0.6) = 38 does not broadcast against 36)."""
    net = cssr(None, 2, "imdn", {"num_modules": 1}, widths=(1.0, 0.6))["w1.0"].model
    shapes = {k: tuple(v.shape) for k, v in net.sliced_state(0.6).items()}
    assert shapes["IMDB1.c4.weight"] == (9, 29, 3, 3)
    assert shapes["IMDB1.cca.conv_du.0.weight"] == (2, 36, 1, 1)
    assert shapes["IMDB1.cca.conv_du.2.weight"] == (36, 2, 1, 1)
    assert shapes["IMDB1.c5.weight"] == (38, 36, 1, 1)
    assert net(torch.rand(1, 3, 6, 5), width=0.6).shape == (1, 3, 12, 10)


def test_width_that_leaves_no_channel_names_width_and_conv():
    options = {"backbone": "rcan", "options": {"n_resgroups": 1, "n_resblocks": 1, "n_feats": 32, "reduction": 8}}
    with pytest.raises(kdsr.KdsrError) as info:  # squeeze 32 / 8 = 4 channels: int(4 x 0.2) = 0
        registry("student").create("cssr", {**options, "widths": [1.0, 0.2]}, teacher=None, scale=2)
    message = str(info.value)
    assert "\n" not in message
    assert "width 0.2" in message and "'body.0.body.0.body.3.conv_du.0'" in message and "at least 0.25" in message
