"""IMDN / IMDN_RTC: parameter counts against the published figures, odd-size forward, taps, official checkpoints.

The official-layout state dicts below are written out from the reference implementation's names and
shapes (Zheng222/IMDN ``model/architecture.py``, ``model/block.py``), not from kdsr's module.
"""

from __future__ import annotations

import pytest
import torch

from kdsr import KdsrError, capture, feature_taps
from kdsr.registry import Registry
from kdsr.weights import load_weights
from kdsr_zoo import imdn as im


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# IMDN paper (Hui et al., ACM MM 2019, arXiv:1909.11856, Table of lightweight SR results): 694K / 703K / 715K
# parameters for x2 / x3 / x4; the exact counts of the reference ``architecture.IMDN(upscale=s)`` round to them.
@pytest.mark.parametrize("scale, total, paper_k", [(2, 694_404, 694), (3, 703_059, 703), (4, 715_176, 715)])
def test_imdn_params(scale: int, total: int, paper_k: int) -> None:
    assert n_params(im.imdn(scale)) == total
    assert round(total / 1000) == paper_k


# IMDN_RTC: no published parameter figure found; 20,190 is the count of the reference
# ``architecture.IMDN_RTC(upscale=2)`` (nf 12, 5 modules), the configuration of ``model_RTC.pth``.
def test_imdn_rtc_params() -> None:
    assert n_params(im.imdn_rtc(2)) == 20_190


@pytest.mark.parametrize("factory, kwargs", [(im.imdn, dict(nf=16, num_modules=2)), (im.imdn_rtc, dict(nf=8, num_modules=2))])
def test_odd_size_forward_and_taps(factory, kwargs) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 17, 23)
    for scale in im.SCALES:
        model = factory(scale, **kwargs).eval()
        taps = feature_taps(model)
        assert list(taps) == ["head", "body.0", "body.1", "body", "upsampler.in"]
        with torch.no_grad(), capture(model, list(taps)) as feats:
            sr = model(lr)
        assert sr.shape == (1, 3, 17 * scale, 23 * scale)
        for name in taps:
            assert feats[name].shape == (1, kwargs["nf"], 17, 23), name


def test_body_and_head_taps_sum_to_upsampler_input() -> None:
    model = im.imdn(2, nf=16, num_modules=2).eval()
    with torch.no_grad(), capture(model, ["head", "body", "upsampler.in"]) as f:
        model(torch.rand(1, 3, 8, 9))
    assert torch.allclose(f["head"] + f["body"], f["upsampler.in"])


def official_imdn_state(scale: int, nf: int = 64, modules: int = 6, prefix: str = "") -> dict[str, torch.Tensor]:
    """Named and shaped as the reference ``IMDN`` (distillation rate 1/4, CCA reduction 16)."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        state[f"{prefix}{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.02
        state[f"{prefix}{name}.bias"] = torch.randn(cout, generator=g) * 0.02

    d, r = nf // 4, nf - nf // 4
    conv("fea_conv", 3, nf, 3)
    for i in range(1, modules + 1):
        conv(f"IMDB{i}.c1", nf, nf, 3)
        conv(f"IMDB{i}.c2", r, nf, 3)
        conv(f"IMDB{i}.c3", r, nf, 3)
        conv(f"IMDB{i}.c4", r, d, 3)
        conv(f"IMDB{i}.c5", nf, nf, 1)
        conv(f"IMDB{i}.cca.conv_du.0", 4 * d, 4 * d // 16, 1)
        conv(f"IMDB{i}.cca.conv_du.2", 4 * d // 16, 4 * d, 1)
    conv("c.0", nf * modules, nf, 1)
    conv("LR_conv", nf, nf, 3)
    conv("upsampler.0", nf, 3 * scale**2, 3)
    return state


def official_rtc_state(scale: int = 2, nf: int = 12, modules: int = 5) -> dict[str, torch.Tensor]:
    """Named and shaped as the reference ``IMDN_RTC``: one ``model`` Sequential of head conv,
    ``ShortcutBlock(sub=Sequential(blocks..., 1x1 conv))``, upsampling conv and pixel shuffle."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.02
        state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.02

    d, r = nf // 4, nf - nf // 4
    conv("model.0", 3, nf, 3)
    for i in range(modules):
        p = f"model.1.sub.{i}"
        conv(f"{p}.c1", nf, nf, 3)
        conv(f"{p}.c2", r, nf, 3)
        conv(f"{p}.c3", r, nf, 3)
        conv(f"{p}.c4", r, d, 3)
        conv(f"{p}.c5", 4 * d, nf, 1)
    conv(f"model.1.sub.{modules}", nf, nf, 1)
    conv("model.2", nf, 3 * scale**2, 3)
    return state


@pytest.mark.parametrize("scale, prefix", [(2, ""), (3, "module."), (4, "")])
def test_official_imdn_checkpoint_loads_strictly(tmp_path, scale: int, prefix: str) -> None:  # noqa: ANN001
    state = official_imdn_state(scale, prefix=prefix)
    path = tmp_path / f"IMDN_x{scale}.pth"
    torch.save(state, path)  # the reference checkpoints are bare state dicts
    model = im.imdn(scale)
    load_weights(model, path, convert=im.load_official, strict=True)
    own = model.state_dict()
    assert set(own) == {k.removeprefix(prefix) for k in state}
    assert all(torch.equal(own[k.removeprefix(prefix)], v) for k, v in state.items())


def test_official_rtc_checkpoint_loads_strictly(tmp_path) -> None:  # noqa: ANN001
    state = official_rtc_state()
    path = tmp_path / "model_RTC.pth"
    torch.save(state, path)
    model = im.imdn_rtc(2)
    load_weights(model, path, convert=im.load_official, strict=True)
    own = model.state_dict()
    assert len(own) == len(state)
    assert torch.equal(own["fea_conv.weight"], state["model.0.weight"])
    assert torch.equal(own["IMDB5.c5.weight"], state["model.1.sub.4.c5.weight"])
    assert torch.equal(own["LR_conv.bias"], state["model.1.sub.5.bias"])
    assert torch.equal(own["upsampler.0.weight"], state["model.2.weight"])
    assert all(torch.equal(own[im.rtc_key(k, 5)], v) for k, v in state.items())


def test_wrong_scale_rtc_checkpoint_is_named(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "model_RTC.pth"
    torch.save(official_rtc_state(scale=2), path)
    with pytest.raises(KdsrError, match="x3.*another scale, x2"):
        load_weights(im.imdn_rtc(3), path, convert=im.load_official)


def test_mixed_prefix_state_is_converted() -> None:
    state = official_imdn_state(4)
    state = {("module." + k if k.startswith("IMDB") else k): v for k, v in state.items()}
    model = im.imdn(4)
    model.load_state_dict(im.load_official(model, state), strict=True)


@pytest.mark.parametrize("file_scale, prefix", [(3, ""), (2, "module.")])
def test_wrong_scale_checkpoint_fails_naming_scale(tmp_path, file_scale: int, prefix: str) -> None:  # noqa: ANN001
    path = tmp_path / "wrong.pth"
    torch.save(official_imdn_state(file_scale, prefix=prefix), path)
    with pytest.raises(KdsrError, match="scale"):
        load_weights(im.imdn(4), path, convert=im.load_official)
    with pytest.raises(KdsrError, match=f"x4.*another scale, x{file_scale}"):  # the converter itself names both scales
        im.load_official(im.imdn(4), official_imdn_state(file_scale))


def test_unsupported_scale_and_bad_options_raise() -> None:
    with pytest.raises(KdsrError, match="scale"):
        im.imdn(8)
    with pytest.raises(KdsrError, match="scale"):
        im.imdn_rtc(1)
    with pytest.raises(KdsrError, match="too narrow"):
        im.imdn(2, nf=8)
    with pytest.raises(KdsrError, match="num_modules"):
        im.imdn(2, num_modules=0)


def test_registration_and_options_schema() -> None:
    registry = Registry("backbone", reserved=("scale",))
    im.register_backbones(lambda name, factory, **extra: registry.add(name, factory, "zoo", **extra))
    assert registry.names() == ["imdn", "imdn_rtc"]
    assert all(registry.get(n).summary for n in registry.names())
    assert registry.get("imdn").extra["load_official"] is im.load_official
    model = registry.create("imdn", {"nf": 32, "num_modules": 3}, scale=3)
    assert len(model.blocks) == 3
    with pytest.raises(KdsrError):
        registry.create("imdn", {"nf": "wide"}, scale=2)


def test_bfloat16_autocast_and_determinism() -> None:
    torch.manual_seed(0)
    model = im.imdn(3, nf=16, num_modules=2).eval()
    lr = torch.rand(2, 3, 9, 11)
    with torch.no_grad():
        ref = model(lr)
        assert torch.equal(model(lr), ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(lr)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1
