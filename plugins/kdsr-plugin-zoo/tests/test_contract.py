"""The contract every zoo backbone keeps, checked for each registered name x scale (tiny widths, CPU).

Forward on an odd LR size gives exactly scale x size; the shared feature taps exist with LR-sized
N x C x h x w tensors; forwards are deterministic and run under bf16 autocast; options validate from
the factory signature; a model's own weights round-trip through ``load_official``, and weights of
another scale fail with kdsr's one-line error.
"""

from __future__ import annotations

import pytest
import torch

import kdsr
import kdsr_zoo
from kdsr.plugins import Plugins
from kdsr.registry import Registry
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
    "swinir": {"embed_dim": 12, "depths": (2, 2), "num_heads": (2, 2), "window_size": 4},
    "swinir_light": {"embed_dim": 12, "depths": (2,), "num_heads": (2,), "window_size": 4},
    "imdn": {"nf": 16, "num_modules": 2},
    "imdn_rtc": {"num_modules": 2},
}
SCALES = (2, 3, 4, 8)
LR_H, LR_W = 17, 23  # odd, non-square, not a multiple of any window size
LR_TAPS = ("head", "body", "upsampler.in")  # the shared vocabulary (plus body.0 .. body.{n-1})

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


def lr_batch() -> torch.Tensor:
    return torch.rand(2, 3, LR_H, LR_W, generator=torch.Generator().manual_seed(1))


def test_zoo_registers_through_kdsr_plugins() -> None:
    plugins = Plugins()
    info = plugins.add(kdsr_zoo, "zoo")
    assert info.ok, info.error
    assert set(BACKBONES) <= set(plugins.registry("backbone").names())
    assert {"edsr", "edsr_baseline"} <= set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_summary_and_options_schema(name: str) -> None:
    reg = Registry("backbone", reserved=("scale",))
    reg.add(name, BACKBONES[name].factory, "zoo")
    entry = reg.get(name)
    assert entry.summary, f"{name}: the factory's first docstring line is the summary"
    defaults = entry.validate({}, "test")  # every option has a default pydantic accepts
    assert "scale" not in defaults
    with pytest.raises(kdsr.KdsrError, match="unknown option"):
        entry.validate({"no_such_option": 1}, "test")


@pytest.mark.parametrize(("name", "scale"), CASES)
def test_forward_shape_taps_determinism(name: str, scale: int) -> None:
    model = build(name, scale)
    x = lr_batch()
    taps = kdsr.feature_taps(model)
    missing = [t for t in (*LR_TAPS, "body.0") if t not in taps]
    assert not missing, f"{name} lacks the shared taps {missing}"
    with torch.no_grad(), kdsr.capture(model, list(taps)) as store:
        y = model(x)
    assert y.shape == (2, 3, LR_H * scale, LR_W * scale)
    assert torch.isfinite(y).all()
    assert set(store) == set(taps), f"declared taps that never fired: {set(taps) - set(store)}"
    channels = store["head"].shape[1]
    lr_names = [t for t in taps if t in LR_TAPS or (t.startswith("body.") and t[5:].isdigit())]
    for t in lr_names:
        assert store[t].shape == (2, channels, LR_H, LR_W), f"{name} tap {t}: {tuple(store[t].shape)}"
    blocks = sorted(int(t[5:]) for t in lr_names if t.startswith("body."))
    assert blocks == list(range(len(blocks))), "body.i taps are numbered 0..n-1"
    if "sr" in taps:
        assert torch.equal(store["sr"], y)
    with torch.no_grad():
        assert torch.equal(model(x), y), "forward is not deterministic"


@pytest.mark.parametrize(("name", "scale"), [c for c in CASES if c[1] in (2, 3)])
def test_bf16_autocast_and_backward(name: str, scale: int) -> None:
    model = build(name, scale).train()
    x = lr_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.shape == (2, 3, LR_H * scale, LR_W * scale)
    assert torch.isfinite(y.float()).all()
    y.float().abs().mean().backward()
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("name", "scale"), [c for c in CASES if c[1] in (2, 4)])
def test_own_weights_round_trip_and_wrong_scale_fails(name: str, scale: int, tmp_path) -> None:
    convert = BACKBONES[name].load_official
    source = build(name, scale)
    target = BACKBONES[name].factory(scale, **TINY.get(name, {}))
    load_via_file(target, source.state_dict(), tmp_path, convert, "same")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    other = build(name, 3)  # x3's upsampler has other shapes than x2's and x4's
    with pytest.raises(kdsr.KdsrError) as err:
        load_via_file(target, other.state_dict(), tmp_path, convert, "other")
    message = str(err.value)
    assert "\n" not in message
    assert "scale" in message.split("do not fit", 1)[1], message  # not in the file path
