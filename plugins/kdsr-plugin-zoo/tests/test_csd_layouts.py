"""Official CSD checkpoints (``Booooooooooo/CSD``, ``PyTorch version``): the trainer's file
``{'epoch', 'model_state_dict' ('module.' + CSD names), 'optimizer_state_dict', 'best_psnr',
'best_psnr_epoch'}`` (``trainer/slim_contrast_trainer.py``, ``train``) and bare CSD state dicts load
through ``kdsr convert`` and ``weights:`` for EDSR, RCAN and CSD's CARN, and a CSD-trained file loads as
a kdsr CSSR-Net. The CSD names are written out here by hand from CSD's ``model/edsr.py`` and
``model/rcan.py``, independently of the loaders' rename rules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kdsr.cli import main
from kdsr.plugins import registry
from kdsr_zoo import edsr as E
from kdsr_zoo import rcan as R
from test_csd_carn import csd_forward, csd_state


def _randomise(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's state dict (EDSR-PyTorch / official RCAN names) with random values, mean shifts kept."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: v.clone() if k.startswith(("sub_mean", "add_mean")) else torch.randn(v.shape, generator=g) * 0.05
        for k, v in model.state_dict().items()
    }


def _upsampler(n: int) -> dict[str, str]:
    """EDSR-PyTorch ``tail.0.{2k}`` (conv, shuffle, conv, shuffle...) <- CSD ``upsampler.blocks.k``."""
    return {f"tail.0.{2 * k}": f"upsampler.blocks.{k}" for k in range(n)}


def edsr_to_csd(n_resblocks: int, n_up: int) -> dict[str, str]:
    """EDSR-PyTorch module -> CSD ``model/edsr.py`` module (``head``, ``body[i].conv1/2``, ``body_conv``...)."""
    names = {"head.0": "head", f"body.{n_resblocks}": "body_conv", "tail.1": "tail_conv", **_upsampler(n_up)}
    for i in range(n_resblocks):
        names[f"body.{i}.body.0"], names[f"body.{i}.body.2"] = f"body.{i}.conv1", f"body.{i}.conv2"
    return names


def rcan_to_csd(n_resgroups: int, n_resblocks: int, n_up: int) -> dict[str, str]:
    """Official RCAN module -> CSD ``model/rcan.py`` module (``head_conv``, RCAB ``body.0/1`` and
    ``caLayer.conv_du.0/1``, group ``conv``, ``body_conv``, ``upsampler.blocks``, ``tail_conv``)."""
    names = {"head.0": "head_conv", f"body.{n_resgroups}": "body_conv", "tail.1": "tail_conv", **_upsampler(n_up)}
    for g in range(n_resgroups):
        names[f"body.{g}.body.{n_resblocks}"] = f"body.{g}.conv"
        for b in range(n_resblocks):
            src, dst = f"body.{g}.body.{b}.body", f"body.{g}.body.{b}"
            names[f"{src}.0"], names[f"{src}.2"] = f"{dst}.body.0", f"{dst}.body.1"
            names[f"{src}.3.conv_du.0"], names[f"{src}.3.conv_du.2"] = f"{dst}.caLayer.conv_du.0", f"{dst}.caLayer.conv_du.1"
    return names


def to_csd(state: dict[str, torch.Tensor], modules: dict[str, str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 1)
        out[f"{modules.get(module, module)}.{leaf}"] = value
    return out


def trainer_file(state: dict[str, torch.Tensor], path):
    """What CSD's trainer writes: DataParallel keys, optimiser state, best PSNR bookkeeping."""
    params = [v for k, v in state.items() if not k.startswith(("sub_mean", "add_mean"))]
    opt = torch.optim.Adam([torch.nn.Parameter(p.clone()) for p in params[:2]])
    torch.save(
        {
            "epoch": 41,
            "model_state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer_state_dict": opt.state_dict(),
            "best_psnr": 31.25,
            "best_psnr_epoch": 41,
        },
        path,
    )
    return path


def convert(src, out, backbone: str, scale: int, **options) -> dict[str, torch.Tensor]:
    argv = ["convert", str(src), str(out), "--backbone", backbone, "--scale", str(scale)]
    for k, v in options.items():
        argv += ["--option", f"{k}={v}"]
    assert main(argv) == 0
    return load_file(str(out))


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("scale,n_up", [(2, 1), (3, 1), (4, 2)])
def test_csd_trainer_checkpoint_converts_to_its_edsr_pytorch_twin(tmp_path, scale, n_up) -> None:
    twin = _randomise(E.edsr(scale, n_resblocks=2, n_feats=16), seed=scale)
    src = trainer_file(to_csd(twin, edsr_to_csd(2, n_up)), tmp_path / "edsr_csd.pth")
    got = convert(src, tmp_path / "edsr.safetensors", "edsr", scale, n_resblocks=2, n_feats=16)
    assert_same_tensors(got, twin)


@pytest.mark.parametrize("scale,n_up", [(2, 1), (3, 1), (4, 2)])
def test_csd_rcan_trainer_and_bare_files_convert_to_the_official_rcan_twin(tmp_path, scale, n_up) -> None:
    opts = {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 16, "reduction": 4}
    twin = _randomise(R.rcan(scale, **opts), seed=scale)
    csd = to_csd(twin, rcan_to_csd(2, 2, n_up))
    assert "head_conv.weight" in csd and "body.1.body.0.caLayer.conv_du.1.weight" in csd
    got = convert(trainer_file(csd, tmp_path / "rcan_csd.pth"), tmp_path / "a.safetensors", "rcan", scale, **opts)
    assert_same_tensors(got, twin)
    bare = tmp_path / "rcan_bare.pt"
    torch.save(csd, bare)
    assert_same_tensors(convert(bare, tmp_path / "b.safetensors", "rcan", scale, **opts), twin)


def test_csd_carn_trainer_file_converts(tmp_path) -> None:
    sd = csd_state(8, 4)
    got = convert(trainer_file(sd, tmp_path / "carn_csd.pth"), tmp_path / "c.safetensors", "csd_carn", 4, n_feats=8)
    renamed = {k.replace("upsample.blocks.1.", "upsample.2.").replace("upsample.blocks.0.", "upsample.0."): v for k, v in sd.items()}
    assert_same_tensors(got, renamed)


def test_a_csd_file_of_another_scale_or_architecture_is_one_line_exit_2(tmp_path, capsys) -> None:
    twin = _randomise(E.edsr(2, n_resblocks=2, n_feats=16))
    src = trainer_file(to_csd(twin, edsr_to_csd(2, 1)), tmp_path / "edsr_csd.pth")
    argv = ["convert", str(src), str(tmp_path / "x.safetensors"), "--backbone", "edsr", "--scale", "4", "--option", "n_resblocks=2", "--option", "n_feats=16"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "edsr_csd.pth" in err and "scale" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def csd_edsr_forward(sd: dict[str, torch.Tensor], x255: torch.Tensor, n_resblocks: int, res_scale: float, width: float) -> torch.Tensor:
    """CSD's ``EDSR.forward(x, width_mult)`` (``model/edsr.py`` + ``common.ResidualBlock``/``Upsampler``)
    on a CSD-named state dict: every conv its leading ``int(C * w)`` channels, RGB sides unsliced."""
    nf = int(sd["head.weight"].shape[0] * width)

    def sl(key: str, x: torch.Tensor, c_out: int) -> torch.Tensor:
        return F.conv2d(x, sd[f"{key}.weight"][:c_out, : x.shape[1]], sd[f"{key}.bias"][:c_out], padding=1)

    x = F.conv2d(x255, sd["sub_mean.weight"], sd["sub_mean.bias"])
    x = sl("head", x, nf)
    res = x
    for i in range(n_resblocks):
        res = res + sl(f"body.{i}.conv2", F.relu(sl(f"body.{i}.conv1", res, nf)), nf) * res_scale
    res = sl("body_conv", res, nf) + x
    k = 0
    while f"upsampler.blocks.{k}.weight" in sd:
        res = F.pixel_shuffle(sl(f"upsampler.blocks.{k}", res, 4 * nf), 2)
        k += 1
    return F.conv2d(sl("tail_conv", res, 3), sd["add_mean.weight"], sd["add_mean.bias"])


def test_a_csd_trained_slimmable_file_loads_as_a_kdsr_cssr_net(tmp_path) -> None:
    if "cssr" not in registry("student"):
        pytest.skip("the cssr student comes with kdsr-plugin-csd")
    twin = _randomise(E.edsr(2, n_resblocks=2, n_feats=16))
    csd = to_csd(twin, edsr_to_csd(2, 1))
    src = trainer_file(csd, tmp_path / "edsr_x2_csd.pth")
    options = {"backbone": "edsr", "options": {"n_resblocks": 2, "n_feats": 16}, "widths": [1.0, 0.25], "weights": str(src)}
    branches = registry("student").create("cssr", options, teacher=None, scale=2)
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    for name, width in (("w1.0", 1.0), ("w0.25", 0.25)):
        with torch.no_grad():
            got = branches[name](x)
        want = csd_edsr_forward(csd, x * 255, 2, 0.1, width) / 255
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_csd_trained_csd_carn_loads_as_a_cssr_net_with_prefix_slicing(tmp_path) -> None:
    """``concat_slicing: prefix`` is CSD's own slicing: the branch equals CSD's forward at that width."""
    if "cssr" not in registry("student"):
        pytest.skip("the cssr student comes with kdsr-plugin-csd")
    sd = csd_state(16, 2)
    src = trainer_file(sd, tmp_path / "carn_x2_csd.pth")
    x = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    outs = {}
    for slicing in ("prefix", "aligned"):
        options = {"backbone": "csd_carn", "options": {"n_feats": 16}, "widths": [1.0, 0.25], "weights": str(src), "concat_slicing": slicing}
        with torch.no_grad():
            outs[slicing] = registry("student").create("cssr", options, teacher=None, scale=2)["w0.25"](x)
    torch.testing.assert_close(outs["prefix"], csd_forward(sd, x * 255, 2, 0.25) / 255, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outs["aligned"], outs["prefix"], atol=1e-4)


def test_a_csd_trainer_file_is_a_configs_teacher_weights(tmp_path) -> None:
    """``teacher: {backbone: rcan, weights: <CSD trainer file>}`` builds the official-RCAN twin."""
    from kdsr.config import ModelSpec
    from kdsr.engine.build import build_backbone

    opts = {"n_resgroups": 2, "n_resblocks": 1, "n_feats": 16, "reduction": 4}
    twin = _randomise(R.rcan(2, **opts), seed=7)
    src = trainer_file(to_csd(twin, rcan_to_csd(2, 1, 1)), tmp_path / "rcan_x2_csd.pth")
    model = build_backbone(ModelSpec(backbone="rcan", options=opts, weights=src), 2, "teacher")
    assert_same_tensors(model.state_dict(), twin)
