"""CSD's CARN (``csd_carn``) against an independent functional re-computation of CSD's
``PyTorch version/model/carn.py`` + ``model/common.py`` (written from that code here, in the 0..255
range, straight on a CSD-named state dict), and against nmhkahn's CARN (``carn``), which it is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdsr.plugins import registry
from kdsr.weights import load_weights
from kdsr_zoo import carn as C
from kdsr_zoo import csd_carn as CC

MEAN = torch.tensor([0.4488, 0.4371, 0.4040]) * 255


def csd_state(c: int, scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with CSD's CARN names and shapes (``upsample.blocks.k``, ``c1.conv``...)."""
    g = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, int, int]] = {"entry": (3, c, 3), "exit": (c, 3, 3)}
    for b in (1, 2, 3):
        for r in (1, 2, 3):
            shapes[f"b{b}.b{r}.conv1"] = shapes[f"b{b}.b{r}.conv2"] = (c, c, 3)
            shapes[f"b{b}.c{r}.conv"] = ((r + 1) * c, c, 1)
        shapes[f"c{b}.conv"] = ((b + 1) * c, c, 1)
    stages = [9] if scale == 3 else [4] * (scale // 2)
    for k, r2 in enumerate(stages):
        shapes[f"upsample.blocks.{k}"] = (c, r2 * c, 3)
    state = {}
    for name, (c_in, c_out, k) in shapes.items():
        state[f"{name}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * 0.1
        state[f"{name}.bias"] = torch.randn(c_out, generator=g) * 0.1
    eye = torch.eye(3).view(3, 3, 1, 1)
    state.update({"sub_mean.weight": eye, "sub_mean.bias": -MEAN, "add_mean.weight": eye, "add_mean.bias": MEAN})
    return state


def csd_forward(sd: dict[str, torch.Tensor], x255: torch.Tensor, scale: int, width: float = 1.0) -> torch.Tensor:
    """CSD's ``CARN.forward(x, width_mult)`` on 0..255 input: every conv uses its leading
    ``int(C_out * w) x int(C_in * w)`` slice (``SlimModule``), RGB sides unsliced."""

    def slim(key: str, x: torch.Tensor) -> torch.Tensor:
        w, b = sd[f"{key}.weight"], sd[f"{key}.bias"]
        o = int(w.shape[0] * width)
        return F.conv2d(x, w[:o, : int(w.shape[1] * width)], b[:o], padding=w.shape[-1] // 2)

    def block(prefix: str, x: torch.Tensor) -> torch.Tensor:
        c = o = x
        for r in (1, 2, 3):
            res = slim(f"{prefix}b{r}.conv2", F.relu(slim(f"{prefix}b{r}.conv1", o)))
            c = torch.cat([c, o + res], 1)  # ResidualBlock: x + residual, no ReLU
            o = F.relu(slim(f"{prefix}c{r}.conv", c))
        return o

    nf = int(sd["entry.weight"].shape[0] * width)
    x = F.conv2d(x255, sd["sub_mean.weight"], sd["sub_mean.bias"])
    x = F.conv2d(x, sd["entry.weight"][:nf], sd["entry.bias"][:nf], padding=1)
    c = o = x
    for b in (1, 2, 3):
        c = torch.cat([c, block(f"b{b}.", o)], 1)
        o = F.relu(slim(f"c{b}.conv", c))
    r = 3 if scale == 3 else 2
    k = 0
    while f"upsample.blocks.{k}.weight" in sd:  # Upsampler: conv + shuffle, no ReLU
        w, bias = sd[f"upsample.blocks.{k}.weight"], sd[f"upsample.blocks.{k}.bias"]
        o = F.pixel_shuffle(F.conv2d(o, w[: r * r * nf, :nf], bias[: r * r * nf], padding=1), r)
        k += 1
    o = F.conv2d(o, sd["exit.weight"][:, :nf], sd["exit.bias"], padding=1)
    return F.conv2d(o, sd["add_mean.weight"], sd["add_mean.bias"])


def _file(state: dict[str, torch.Tensor], tmp_path, name: str = "csd_carn.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_csd_carn_is_registered_and_loads_a_bare_csd_state_dict(tmp_path) -> None:
    for scale in (2, 3, 4):
        sd = csd_state(8, scale, seed=scale)
        model = registry("backbone").create("csd_carn", {"n_feats": 8}, scale=scale).eval()
        load_weights(model, _file(sd, tmp_path), registry("backbone").get("csd_carn").extra["load_official"])
        x = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got = model(x)
        want = csd_forward(sd, x * 255, scale) / 255
        assert got.shape == (1, 3, 7 * scale, 9 * scale)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _to_nmhkahn(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same conv weights under CARN-pytorch's names (mean shifts left to the model: its range differs)."""
    out = {}
    for key, v in sd.items():
        if key.startswith(("sub_mean", "add_mean")):
            continue
        key = key.replace(".conv1.", ".body.0.").replace(".conv2.", ".body.2.").replace(".conv.", ".body.0.")
        if key.startswith("upsample.blocks."):
            k = int(key.split(".")[2])
            key = f"upsample.up.body.{3 * k}." + key.split(".")[-1]
        out[key] = v
    return out


def test_csd_carn_is_not_nmhkahns_carn() -> None:
    """Same weights, two networks: the ReLUs after residual adds and in the upsampler (and the mean
    shift's range) make nmhkahn's CARN compute something else."""
    sd = csd_state(16, 2)
    ours = CC.csd_carn(2, n_feats=16).eval()
    ours.load_state_dict(CC.load_official(ours, sd))
    theirs = C.carn(2, n_feats=16).eval()
    theirs.load_state_dict(C.load_official(theirs, _to_nmhkahn(sd)))
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    torch.testing.assert_close(a, csd_forward(sd, x * 255, 2) / 255, rtol=1e-5, atol=1e-6)
    assert (a - b).abs().mean() / a.abs().mean() > 0.01


def test_csd_and_carn_files_name_the_backbone_that_loads_them(tmp_path) -> None:
    import pytest

    from kdsr import KdsrError

    csd_file = _file(csd_state(8, 2), tmp_path)
    with pytest.raises(KdsrError, match="use backbone 'csd_carn'"):
        load_weights(C.carn(2, n_feats=8), csd_file, C.load_official)
    carn_file = tmp_path / "carn.pt"
    torch.save(C.carn(2, n_feats=8).state_dict(), carn_file)
    with pytest.raises(KdsrError, match="use backbone 'carn'"):
        load_weights(CC.csd_carn(2, n_feats=8), carn_file, CC.load_official)


def test_csd_carn_parameter_counts() -> None:
    """The convs of CARN's single-scale model (methods.md 1.1: 0.96 M / 1.15 M / 1.11 M at x2/x3/x4);
    the mean shifts are frozen buffers, as CSD freezes them."""
    from zoo_testing import n_params

    assert [n_params(CC.csd_carn, s) for s in (2, 3, 4)] == [964_163, 1_148_803, 1_111_875]
