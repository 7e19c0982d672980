"""SwinIR: parameter counts against the published figures, odd-size forward, taps, official checkpoints.

The official-layout state dicts below are written out from the key names and shapes of the reference
implementation (JingyunLiang/SwinIR ``models/network_swinir.py``; BasicSR's ``swinir_arch.py`` uses
the same names), not from kdsr's module, so a renamed or reshaped parameter fails here.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdsr import KdsrError, capture, feature_taps
from kdsr.registry import Registry
from kdsr.weights import load_weights
from kdsr_zoo import swinir as sw

TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(2, 3))  # two RSTBs, each with a shifted layer


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_params_without_bias_tables(model: torch.nn.Module) -> int:
    return sum(p.numel() for k, p in model.named_parameters() if not k.endswith("relative_position_bias_table"))


# SwinIR-S (lightweight). The paper (Liang et al. 2021, arXiv:2108.10257, Table 3, lightweight SR) gives
# 878K / 886K / 897K for x2 / x3 / x4. Those figures equal the reference model's parameters *without* the
# 24 relative-position bias tables (24 x 225 x 6 = 32,400), most likely because the counting tool only
# visited leaf layers; all three scales round exactly. The full trainable count is 32,400 higher.
@pytest.mark.parametrize(
    "scale, total, paper_k",
    [(2, 910_152, 878), (3, 918_267, 886), (4, 929_628, 897)],
)
def test_swinir_light_params(scale: int, total: int, paper_k: int) -> None:
    model = sw.swinir_light(scale)
    assert n_params(model) == total
    assert n_params(model) - n_params_without_bias_tables(model) == 4 * 6 * 15**2 * 6
    assert round(n_params_without_bias_tables(model) / 1000) == paper_k


# SwinIR-M (classical). Reference README ("detailed comparison between SwinIR and RCAN", x4, DIV2K):
# #Params 11.9M, which is the full count (bias tables included). Other scales differ only in the upsampler.
@pytest.mark.parametrize(
    "scale, total",
    [(2, 11_752_487), (3, 11_937_127), (4, 11_900_199), (8, 12_047_911)],
)
def test_swinir_classical_params(scale: int, total: int) -> None:
    with torch.device("meta"):  # shapes only: no allocation or initialisation
        model = sw.swinir(scale)
    assert n_params(model) == total
    if scale == 4:
        assert round(total / 1e5) / 10 == 11.9


@pytest.mark.parametrize("factory, scales", [(sw.swinir, sw.CLASSICAL_SCALES), (sw.swinir_light, sw.LIGHTWEIGHT_SCALES)])
def test_odd_size_forward_and_taps(factory, scales) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    lr = torch.rand(1, 3, 17, 23)
    for scale in scales:
        model = factory(scale, **TINY).eval()
        taps = feature_taps(model)
        assert list(taps) == ["head", "body.0", "body.1", "body", "upsampler.in"]
        with torch.no_grad(), capture(model, list(taps)) as feats:
            sr = model(lr)
        assert sr.shape == (1, 3, 17 * scale, 23 * scale)
        for name in taps:  # the LR-sized region of features computed on the padded input
            assert feats[name].shape == (1, 12, 17, 23), name


def test_padding_only_when_needed_and_taps_are_crops() -> None:
    model = sw.swinir_light(2, **TINY).eval()
    with torch.no_grad(), capture(model, ["head", "conv_first", "body.1", "layers.1"]) as feats:
        model(torch.rand(1, 3, 17, 23))
    assert feats["conv_first"].shape[-2:] == (24, 24)  # padded to the window multiple (8)
    assert torch.equal(feats["head"], feats["conv_first"][..., :17, :23])
    assert torch.equal(feats["body.1"], feats["layers.1"][..., :17, :23])
    with torch.no_grad(), capture(model, ["conv_first"]) as feats:
        model(torch.rand(1, 3, 16, 24))
    assert feats["conv_first"].shape[-2:] == (24, 32)  # eval, aligned: a full window, as main_test_swinir.py
    with torch.no_grad(), capture(model.train(), ["conv_first"]) as feats:
        model(torch.rand(1, 3, 16, 24))
    assert feats["conv_first"].shape[-2:] == (16, 24)  # training, aligned: no padding, as the reference trainer


def test_mirror_padding_matches_flip_concat_and_handles_tiny_inputs() -> None:
    x = torch.rand(1, 3, 5, 7)
    expected = torch.cat([x, x.flip(2)], 2)[:, :, :8]  # the reference test script's padding
    expected = torch.cat([expected, expected.flip(3)], 3)[..., :8]
    assert torch.equal(sw.pad_mirror(x, 8), expected)
    assert sw.pad_mirror(torch.rand(1, 3, 2, 3), 8).shape[-2:] == (8, 8)
    model = sw.swinir_light(4, **TINY).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 3, 2)).shape == (1, 3, 12, 8)


def test_shift_mask_matches_region_definition() -> None:
    """The vectorised mask equals the reference's definition: label 3 x 3 regions by slices, then
    mask pairs of tokens from different regions within each window."""
    h, w, ws, shift = 16, 24, 8, 4
    labels = torch.zeros(h, w)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, hs in enumerate(bands):
        for j, wsl in enumerate(bands):
            labels[hs, wsl] = 3 * i + j
    windows = labels.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    expected = (windows[:, None, :] != windows[:, :, None]).float() * -100.0
    assert torch.equal(sw.shifted_window_mask(h, w, ws, shift, torch.device("cpu")), expected)


def test_relative_position_index_formula() -> None:
    ws = 8
    y, x = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    y, x = y.flatten(), x.flatten()
    expected = (y[:, None] - y[None, :] + ws - 1) * (2 * ws - 1) + (x[:, None] - x[None, :] + ws - 1)
    assert torch.equal(sw.relative_position_index(ws), expected)


def official_state(
    scale: int, embed_dim: int, depths, num_heads, upsampler: str, window_size: int = 8, mlp_ratio: float = 2.0, img_size: int = 64
) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """A state dict named and shaped as the reference SwinIR's, with random values (true index buffers)."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def rand(name: str, *shape: int) -> None:
        state[name] = torch.randn(*shape, generator=g) * 0.02

    def conv(name: str, cin: int, cout: int) -> None:
        rand(f"{name}.weight", cout, cin, 3, 3)
        rand(f"{name}.bias", cout)

    def linear(name: str, cin: int, cout: int) -> None:
        rand(f"{name}.weight", cout, cin)
        rand(f"{name}.bias", cout)

    def norm(name: str) -> None:
        rand(f"{name}.weight", embed_dim)
        rand(f"{name}.bias", embed_dim)

    n_tok, n_win, hidden = window_size**2, (img_size // window_size) ** 2, int(embed_dim * mlp_ratio)
    y, x = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    y, x = y.flatten(), x.flatten()
    index = (y[:, None] - y[None, :] + window_size - 1) * (2 * window_size - 1) + (x[:, None] - x[None, :] + window_size - 1)

    conv("conv_first", 3, embed_dim)
    norm("patch_embed.norm")
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}"
            norm(f"{p}.norm1")
            rand(f"{p}.attn.relative_position_bias_table", (2 * window_size - 1) ** 2, heads)
            state[f"{p}.attn.relative_position_index"] = index.clone()
            linear(f"{p}.attn.qkv", embed_dim, 3 * embed_dim)
            linear(f"{p}.attn.proj", embed_dim, embed_dim)
            norm(f"{p}.norm2")
            linear(f"{p}.mlp.fc1", embed_dim, hidden)
            linear(f"{p}.mlp.fc2", hidden, embed_dim)
            if j % 2:  # shifted layers store their mask for img_size
                state[f"{p}.attn_mask"] = torch.zeros(n_win, n_tok, n_tok)
        conv(f"layers.{i}.conv", embed_dim, embed_dim)
    norm("norm")
    conv("conv_after_body", embed_dim, embed_dim)
    if upsampler == "pixelshuffle":
        conv("conv_before_upsample.0", embed_dim, 64)
        steps = [(0, 9 * 64)] if scale == 3 else [(2 * k, 4 * 64) for k in range(int(math.log2(scale)))]
        for idx, cout in steps:
            conv(f"upsample.{idx}", 64, cout)
        conv("conv_last", 64, 3)
    else:
        conv("upsample.0", embed_dim, 3 * scale**2)
    return state


# Reference-sized configurations, plus a narrow classical one for the cases that only exercise the
# upsampler naming (same code path, a fraction of the time on 2 CPU cores).
CASES = {
    "swinir_light": (sw.swinir_light, dict(embed_dim=60, depths=[6] * 4, num_heads=[6] * 4), "pixelshuffledirect"),
    "swinir": (sw.swinir, dict(embed_dim=180, depths=[6] * 6, num_heads=[6] * 6), "pixelshuffle"),
    "swinir_narrow": (sw.swinir, dict(embed_dim=24, depths=[2, 2], num_heads=[2, 3]), "pixelshuffle"),
}


@pytest.mark.parametrize(
    "name, scale, wrapper",
    [("swinir_light", 4, "params"), ("swinir", 4, "params"), ("swinir_narrow", 3, "params_ema"), ("swinir_narrow", 8, "params")],
)
def test_official_checkpoint_loads_strictly(tmp_path, name: str, scale: int, wrapper: str) -> None:  # noqa: ANN001
    factory, arch, upsampler = CASES[name]
    state = official_state(scale, upsampler=upsampler, **arch)
    path = tmp_path / "official.pth"
    torch.save({wrapper: state}, path)
    model = factory(scale, **arch)
    load_weights(model, path, convert=sw.load_official, strict=True)
    own = model.state_dict()
    assert set(own) == {k for k in state if not k.endswith("attn_mask")}
    assert all(torch.equal(own[k], state[k]) for k in own)


def test_converted_file_without_index_buffers_loads() -> None:
    state = official_state(2, upsampler="pixelshuffledirect", **CASES["swinir_light"][1])
    state = {k: v for k, v in state.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    model = sw.swinir_light(2)
    model.load_state_dict(sw.load_official(model, state), strict=True)


@pytest.mark.parametrize(
    "name, file_scale, model_scale", [("swinir_light", 2, 4), ("swinir_narrow", 2, 4), ("swinir_narrow", 3, 4), ("swinir_narrow", 8, 2)]
)
def test_wrong_scale_checkpoint_is_named(tmp_path, name: str, file_scale: int, model_scale: int) -> None:  # noqa: ANN001
    factory, arch, upsampler = CASES[name]
    path = tmp_path / "official.pth"
    torch.save({"params": official_state(file_scale, upsampler=upsampler, **arch)}, path)
    with pytest.raises(KdsrError, match=f"x{model_scale}.*another scale, x{file_scale}"):
        load_weights(factory(model_scale, **arch), path, convert=sw.load_official)


def test_unsupported_scale_and_bad_options_raise() -> None:
    with pytest.raises(KdsrError, match="scale"):
        sw.swinir(5)
    with pytest.raises(KdsrError, match="scale"):
        sw.swinir_light(8)
    with pytest.raises(KdsrError, match="num_heads"):
        sw.swinir_light(2, depths=(2, 2), num_heads=(2,))
    with pytest.raises(KdsrError, match="divisible"):
        sw.swinir_light(2, embed_dim=10, depths=(2,), num_heads=(3,))


def test_registration_and_options_schema() -> None:
    registry = Registry("backbone", reserved=("scale",))
    sw.register_backbones(lambda name, factory, **extra: registry.add(name, factory, "zoo", **extra))
    assert registry.names() == ["swinir", "swinir_light"]
    assert registry.get("swinir_light").extra["load_official"] is sw.load_official
    model = registry.create("swinir_light", {"embed_dim": 12, "depths": [2], "num_heads": [3]}, scale=3)
    assert isinstance(model, sw.SwinIR) and len(model.layers) == 1
    with pytest.raises(KdsrError, match="unknown option"):
        registry.create("swinir", {"img_size": 64}, scale=2)


def test_bfloat16_autocast_and_determinism() -> None:
    torch.manual_seed(0)
    model = sw.swinir(2, **TINY).eval()
    lr = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        ref = model(lr)
        assert torch.equal(model(lr), ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(lr)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.1
