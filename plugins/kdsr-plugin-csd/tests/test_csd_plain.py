"""A CSSR-Net branch as a plain network (``to_plain``), and a CSD run's final weights used elsewhere.

The plain network is built through the registry from nothing but the exported (backbone, options, scale) and
loaded with the exported state dict; its output must equal the branch's (fp32, max |diff| <= 1e-6).
"""

from __future__ import annotations

import pytest
import torch

import kdsr
from kdsr.config import ModelSpec
from kdsr.engine.build import build_backbone
from kdsr.engine.checkpoint import collect
from kdsr.plugins import registry
from kdsr.weights import load_weights, save_weights
from kdsr_csd import cssr, make_slimmable

WIDTHS = (0.5, 0.3, 0.4, 0.6, 0.7)
# backbone, options, scale, cssr keyword arguments, the width option
CASES = [
    ("edsr", {"n_resblocks": 1, "n_feats": 64}, 4, {}, "n_feats"),
    ("rcan", {"n_resgroups": 1, "n_resblocks": 1}, 3, {}, "n_feats"),  # 64 channels, reduction 16
    ("carn", {"n_feats": 32}, 2, {}, "n_feats"),
    ("carn", {"n_feats": 32}, 2, {"concat_slicing": "aligned"}, "n_feats"),
    ("imdn", {"num_modules": 1}, 2, {}, "nf"),
]
if "csd_carn" in registry("backbone"):  # CSD's own CARN, where the zoo provides it
    CASES.append(("csd_carn", {}, 2, {}, "n_feats"))
IDS = [f"{c[0]}-{c[3].get('concat_slicing', 'prefix')}" for c in CASES]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared(backbone: str, options: dict, scale: int, widths=(1.0, *WIDTHS), **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    net = cssr(None, scale, backbone, options, widths=widths, **kw)["w1.0"].model
    for p in net.parameters():  # non-zero biases, so a wrong bias slice cannot hide
        p.data += 0.01 * torch.randn_like(p)
    return net.eval()


def rebuilt(plain: kdsr.PlainNetwork) -> torch.nn.Module:
    """The exported network from its description alone."""
    net = registry("backbone").create(plain.backbone, plain.options, scale=plain.scale)
    net.load_state_dict(plain.state_dict, strict=True)
    return net.eval()


@pytest.mark.parametrize(("backbone", "options", "scale", "kw", "width_key"), CASES, ids=IDS)
def test_plain_network_equals_the_branch(backbone, options, scale, kw, width_key):
    net = shared(backbone, options, scale, **kw)
    x = torch.rand(2, 3, 11, 9)
    full = registry("backbone").create(backbone, options, scale=scale)
    channels = registry("backbone").get(backbone).validate(options, "test")[width_key]
    for width in WIDTHS:
        plain = net.to_plain(width=width)
        assert (plain.backbone, plain.scale) == (backbone, scale)
        assert plain.options[width_key] == int(channels * width)
        assert plain.options == {**options, width_key: int(channels * width)}
        small = rebuilt(plain)
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters())
        with torch.no_grad():
            diff = (small(x) - net(x, width=width)).abs().max().item()
        assert diff <= 1e-6, (width, diff)
    plain = net.to_plain(width=1.0)
    assert plain.options == options
    with torch.no_grad():
        assert torch.equal(rebuilt(plain)(x), net(x))


def test_rcan_squeeze_maps_onto_the_narrow_reduction():
    """47 channels, reduction 16: squeeze 2, at w0.9 int(2 x 0.9) = 1 channel, but 42 // 16 = 2; the narrow RCAN
    that computes the branch has reduction 22 (42 // 22 = 1; the nearest to 16 that fits)."""
    options = {"n_resgroups": 1, "n_resblocks": 1, "n_feats": 47}
    net = shared("rcan", options, 2, widths=(1.0, 0.9))
    plain = net.to_plain(width=0.9)
    assert plain.options == {**options, "n_feats": 42, "reduction": 22}
    x = torch.rand(1, 3, 7, 6)
    with torch.no_grad():
        assert (rebuilt(plain)(x) - net(x, width=0.9)).abs().max().item() <= 1e-6


def test_branch_a_backbone_cannot_state_is_refused():
    """IMDN, distillation rate 0.2 on 64 channels, w0.4: the branch splits off int(12 x 0.4) = 4 channels, an
    IMDN of int(64 x 0.4) = 25 channels splits off int(25 x 0.2) = 5; no exported file, a one-line error."""
    net = shared("imdn", {"num_modules": 1, "distillation_rate": 0.2}, 2, widths=(1.0, 0.4))
    with pytest.raises(kdsr.KdsrError, match="w0.4 branch of backbone 'imdn'.*cannot be exported") as info:
        net.to_plain(width=0.4)
    assert "\n" not in str(info.value)


def test_plain_network_that_computes_something_else_is_refused():
    net = shared("edsr", {"n_resblocks": 1, "n_feats": 16}, 2, widths=(1.0, 0.5))
    exact = net.sliced_state

    def tampered(width):
        state = exact(width)
        state["tail.1.bias"] = state["tail.1.bias"] + 0.01  # right shapes, other weights: 4e-5 off in [0, 1]
        return state

    net.sliced_state = tampered
    with pytest.raises(kdsr.KdsrError, match="is not a plain 'edsr'.*outputs differ"):
        net.to_plain(width=0.5)


def test_a_cssr_net_without_its_backbone_spec_is_refused():
    net = make_slimmable(registry("backbone").create("edsr_baseline", {"n_feats": 8, "n_resblocks": 1}, scale=2))
    with pytest.raises(kdsr.KdsrError, match="'cssr' student constructor"):
        net.to_plain(width=0.5)


def test_csd_final_weights_load_as_backbone_cssr_weights_and_teacher(tmp_path):
    """What a CSD run writes (``w1.0.head.0.weight``, ...) loads as the plain full-width backbone, as the
    ``cssr`` constructor's ``weights`` and as another run's teacher, as the plugin README says."""
    options = {"n_resblocks": 1, "n_feats": 16}
    branches = cssr(None, 2, "edsr", options, widths=(1.0, 0.5))
    net = branches["w1.0"].model
    for p in net.parameters():
        p.data += 0.01 * torch.randn_like(p)
    path = tmp_path / "final.safetensors"
    save_weights(collect({"w1.0": net}), path)  # the run's unique_modules name the shared net after w1.0
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        want, want_half = net(x), net(x, width=0.5)

        plain = registry("backbone").create("edsr", options, scale=2)
        load_weights(plain, path, registry("backbone").get("edsr").extra.get("load_official"))
        assert torch.equal(plain(x), want)

        again = cssr(None, 2, "edsr", options, widths=(1.0, 0.5), weights=path)
        assert torch.equal(again["w1.0"](x), want) and torch.equal(again["w0.5"](x), want_half)

        teacher = build_backbone(ModelSpec(backbone="edsr", options=options, weights=path), 2, "stages[0].teacher")
        assert torch.equal(teacher(x), want)
