"""Intermediate SR heads: shapes, output mapping, default positions, freezing, loading weights."""

from __future__ import annotations

import pytest
import torch

from hkdsr_testing import TINY_EDSR, TINY_RCAN, backbone, one_thread  # noqa: F401 - fixture
from kdsr import Batch, Outputs, capture
from kdsr.weights import load_weights, save_weights
from kdsr_hkdsr.heads import HeadedSR, default_taps
from kdsr_hkdsr.losses import hkdsr_heads_l1
from kdsr_hkdsr.model import hkdsr_backbone, hkdsr_student, load_official

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch,options", [("edsr_baseline", TINY_EDSR), ("rcan", TINY_RCAN)])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_heads_output_sr_shapes_on_odd_sizes(arch: str, options: dict, scale: int) -> None:
    torch.manual_seed(0)
    net = HeadedSR(backbone(arch, scale, **options), scale)
    lr = torch.rand(2, 3, 7, 5)
    names = [f"heads.{i}" for i in range(len(net.heads))]
    with torch.no_grad(), capture(net, names) as taps:
        sr = net(lr)
    assert sr.shape == (2, 3, 7 * scale, 5 * scale)
    assert len(net.heads) == 2
    for name in names:
        assert taps[name].shape == sr.shape
    torch.testing.assert_close(sr, net.backbone(lr))  # the final output is the backbone's


def test_default_taps_are_the_official_rcan_groups() -> None:
    with torch.device("meta"):
        assert default_taps(backbone("rcan", 4)) == ["body.2", "body.6"]  # after groups 3 and 7 of 10
    assert default_taps(backbone("edsr_baseline", 2, n_resblocks=16, n_feats=8)) == ["body.4", "body.10"]
    assert default_taps(backbone("edsr_baseline", 2, n_resblocks=1, n_feats=8)) == ["body.0"]


@pytest.mark.parametrize("arch,options", [("edsr_baseline", TINY_EDSR), ("rcan", TINY_RCAN)])
def test_head_maps_to_images_like_the_backbone(arch: str, options: dict) -> None:
    """With a zero conv to RGB a head outputs the backbone's mean image: the same add_mean / rgb_range."""
    net = HeadedSR(backbone(arch, 2, **options), 2)
    for head in net.heads:
        torch.nn.init.zeros_(head.to_rgb.weight)
        torch.nn.init.zeros_(head.to_rgb.bias)
    with torch.no_grad(), capture(net, ["heads.0"]) as taps:
        net(torch.rand(1, 3, 6, 6))
    mean = net.backbone.add_mean.bias / net.backbone.rgb_range
    torch.testing.assert_close(taps["heads.0"], mean.view(1, 3, 1, 1).expand(1, 3, 12, 12))


def test_heads_run_only_when_tapped() -> None:
    net = HeadedSR(backbone("edsr_baseline", 2, **TINY_EDSR), 2)
    calls = []
    net.heads[0].pre.register_forward_hook(lambda *_: calls.append(1))
    net(torch.rand(1, 3, 6, 6))
    assert calls == []  # plain forward = the backbone alone (eval, profiling, inference)
    with capture(net, ["heads.1"]):
        net(torch.rand(1, 3, 6, 6))
    assert calls == [1]


def test_head_pretraining_freezes_the_teacher_copy() -> None:
    torch.manual_seed(0)
    teacher = backbone("rcan", 2, **TINY_RCAN).eval().requires_grad_(False)
    branch = hkdsr_student(teacher, 2, freeze_backbone=True)["student"]
    net = branch.model
    assert net.backbone is not teacher
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    loss_fn = hkdsr_heads_l1()
    lr, hr = torch.rand(2, 3, 6, 5), torch.rand(2, 3, 12, 10)
    with capture(net, loss_fn.needs.student_taps) as taps:
        sr = branch(lr)
    loss = loss_fn(Outputs(sr, dict(taps)), None, Batch(lr, hr))
    loss.backward()
    assert all(p.grad is None for p in net.backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.heads.parameters())
    expected = sum(torch.nn.functional.l1_loss(taps[t], hr) for t in ("heads.0", "heads.1"))
    torch.testing.assert_close(loss, expected)


def test_student_constructor_errors() -> None:
    with pytest.raises(ValueError, match="no teacher"):
        hkdsr_student(None, 2)
    with pytest.raises(ValueError, match="no tap"):
        hkdsr_student(None, 2, backbone="edsr_baseline", options=TINY_EDSR, heads=["body.9"])
    with pytest.raises(ValueError, match="add_mean"):
        hkdsr_student(None, 2, backbone="swinir_light", options={"embed_dim": 12, "depths": [1], "num_heads": [1]})


def test_backbone_checkpoints_and_saved_hkdsr_teachers_load(tmp_path) -> None:
    torch.manual_seed(0)
    plain = backbone("rcan", 2, **TINY_RCAN)
    save_weights(plain.state_dict(), tmp_path / "rcan.safetensors")
    net = hkdsr_backbone(2, "rcan", TINY_RCAN)
    heads_before = {k: v.clone() for k, v in net.heads.state_dict().items()}
    load_weights(net, tmp_path / "rcan.safetensors", load_official)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(net.backbone.state_dict()[k], v)
    for k, v in net.heads.state_dict().items():
        torch.testing.assert_close(v, heads_before[k])
    # a run's final.safetensors: keys prefixed with the branch name
    save_weights({f"student.{k}": v for k, v in net.state_dict().items()}, tmp_path / "final.safetensors")
    other = hkdsr_backbone(2, "rcan", TINY_RCAN)
    load_weights(other, tmp_path / "final.safetensors", load_official)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)


def test_reports_see_only_the_backbone() -> None:
    """Multi-Adds (fvcore, which hooks every module) and parameter counts are the deployable backbone's."""
    from kdsr import Branch
    from kdsr.profiling import count_params, profile_macs
    from kdsr.report import branch_params

    plain = backbone("edsr_baseline", 2, **TINY_EDSR)
    net = HeadedSR(plain, 2)
    assert profile_macs(net, (8, 8)).total == profile_macs(plain, (8, 8)).total
    assert branch_params(Branch(net)) == count_params(plain) < count_params(net)


def test_heads_need_output_taps_of_convolutions() -> None:
    with pytest.raises(ValueError, match="cannot attach"):
        HeadedSR(backbone("edsr_baseline", 2, **TINY_EDSR), 2, taps=["upsampler.in"])
