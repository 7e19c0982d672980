"""The contract every zoo backbone keeps, checked for each registered name x scale (tiny widths, CPU).

The checks are kdsr's own (``kdsr.testing.check_backbone``, the kit every plugin author uses):
forward on an odd LR size gives exactly scale x size; the shared feature taps exist with LR-sized
N x C x h x w tensors; forwards are deterministic and run under bf16 autocast; options validate from
the factory signature; a model's own weights round-trip through ``load_official``. Zoo-specific:
weights of another scale fail with kdsr's one-line error.
"""

from __future__ import annotations

import pytest
import torch

import kdsr
import kdsr_zoo
from kdsr.registry import Registry
from kdsr.testing import check_backbone, check_options, check_plugin
from zoo_testing import load_via_file, zoo_backbones

BACKBONES = zoo_backbones()

# Small settings per registered name so each forward takes milliseconds; names not listed are built
# with their defaults (correct, just slower): add an entry when registering a new backbone.
TINY: dict[str, dict] = {
    "edsr": {"n_resblocks": 2, "n_feats": 16},
    "edsr_baseline": {"n_resblocks": 2, "n_feats": 16},
    "rcan": {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 16, "reduction": 4},
    "carn": {"n_feats": 16},
    "carn_m": {"n_feats": 16},
    "csd_carn": {"n_feats": 16},
    "swinir": {"embed_dim": 12, "depths": (2, 2), "num_heads": (2, 2), "window_size": 4},
    "swinir_light": {"embed_dim": 12, "depths": (2,), "num_heads": (2,), "window_size": 4},
    "imdn": {"nf": 16, "num_modules": 2},
    "imdn_rtc": {"num_modules": 2},
}
SCALES = (2, 3, 4, 8)
LR_H, LR_W = 17, 23  # odd, non-square, not a multiple of any window size

CASES = [(name, scale) for name in sorted(BACKBONES) for scale in SCALES]


def build(name: str, scale: int) -> torch.nn.Module:
    try:
        model = BACKBONES[name].factory(scale, **TINY.get(name, {}))
    except kdsr.KdsrError as exc:
        if scale == 8:  # x8 only where the reference supports it
            pytest.skip(f"{name} has no x8: {exc}")
        raise
    torch.manual_seed(0)
    for p in model.parameters():  # non-trivial weights everywhere (some inits leave biases at zero)
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def test_zoo_registers_through_kdsr_plugins() -> None:
    provides = check_plugin(kdsr_zoo, name="zoo")
    assert provides == {"backbone": sorted(BACKBONES)}
    assert {"edsr", "edsr_baseline"} <= set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_summary_and_options_schema(name: str) -> None:
    defaults = check_options(BACKBONES[name].factory, "backbone", reserved=("scale",), require_defaults=True)
    assert "scale" not in defaults
    reg = Registry("backbone", reserved=("scale",))
    reg.add(name, BACKBONES[name].factory, "zoo")
    with pytest.raises(kdsr.KdsrError, match="unknown option"):
        reg.get(name).validate({"no_such_option": 1}, "test")


@pytest.mark.parametrize(("name", "scale"), CASES)
def test_backbone_contract(name: str, scale: int) -> None:
    build(name, scale)  # skips a scale the reference does not support
    check_backbone(
        BACKBONES[name].factory,
        scales=(scale,),
        options=TINY.get(name, {}),
        lr_size=(LR_H, LR_W),
        bf16=scale in (2, 3),
        load_official=BACKBONES[name].load_official if scale in (2, 4) else None,
    )


@pytest.mark.parametrize(("name", "scale"), [c for c in CASES if c[1] in (2, 4)])
def test_weights_of_another_scale_fail(name: str, scale: int, tmp_path) -> None:
    target = BACKBONES[name].factory(scale, **TINY.get(name, {}))
    other = build(name, 3)  # x3's upsampler has other shapes than x2's and x4's
    with pytest.raises(kdsr.KdsrError) as err:
        load_via_file(target, other.state_dict(), tmp_path, BACKBONES[name].load_official, "other")
    message = str(err.value)
    assert "\n" not in message
    assert "scale" in message.split("do not fit", 1)[1], message  # not in the file path
