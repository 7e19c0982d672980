"""CSD's contrastive loss against a direct re-computation of methods.md 1.2, its VGG, and what it trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdsr import Batch, Outputs
from kdsr_csd import ContrastiveLoss, csd, cssr
from kdsr_csd.vgg import RELU_INDICES, vgg19_features
from csd_testing import TinyFeatures

WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def images(b: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(phi, s, t, bicubic, k, mode):
    """sum_j w_j d(S, T) / (sum_k d(S, N_k) + 1e-7), d = mean |.| over the batch, on [0, 255] inputs."""
    fs, ft, fb = phi(s * 255), phi(t * 255), phi(bicubic * 255)
    n = s.shape[0]
    total = 0.0
    for w, a, p, neg in zip(WEIGHTS, fs, ft, fb):
        d_pos = (a - p).abs().mean()
        d_neg = 0.0
        for j in range(k):
            per_anchor = []
            for i in range(n):
                other = j if mode == "batch" else (i + j + 1) % n  # 'other': images i+1 .. i+K, never i
                per_anchor.append((a[i] - neg[other]).abs().mean())
            d_neg = d_neg + torch.stack(per_anchor).mean()
        total = total + w * d_pos / (d_neg + 1e-7)
    return total


@pytest.mark.parametrize(("mode", "b", "k"), [("batch", 4, 3), ("batch", 3, 3), ("other", 5, 3)])
@pytest.mark.parametrize("detach", [True, False])
def test_value_and_gradients_match_the_formula(mode, b, k, detach):
    phi = TinyFeatures()
    loss = ContrastiveLoss(phi, WEIGHTS, num_negatives=k, negatives=mode, detach_teacher=detach)
    s, t, lr = images(b, 1).requires_grad_(), images(b, 2).requires_grad_(), images(b, 3)
    bicubic = images(b, 4)
    value = loss(Outputs(s), Outputs(t), Batch(lr, lr, bicubic))
    gs, gt = torch.autograd.grad(value, (s, t), allow_unused=True)

    s2, t2 = s.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    expected = reference(phi, s2, t2.detach() if detach else t2, bicubic, k, mode)
    es, et = torch.autograd.grad(expected, (s2, t2), allow_unused=True)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(gs, es, rtol=1e-10, atol=1e-14)
    if detach:
        assert gt is None and et is None
    else:
        torch.testing.assert_close(gt, et, rtol=1e-10, atol=1e-14)


def test_negative_features_once_per_step_shared_by_terms():
    phi = TinyFeatures()
    first = ContrastiveLoss(phi, WEIGHTS, num_negatives=3)
    second = ContrastiveLoss(phi, WEIGHTS, num_negatives=3)  # e.g. the next pair of a Pro-CSD chain
    s, t, lr, bic = images(4, 1), images(4, 2), images(4, 3), images(4, 4)
    batch = Batch(lr, lr, bic)
    first(Outputs(s), Outputs(t), batch)
    assert phi.calls == [4, 4, 3]  # anchors, positives, then the K negatives in one batched pass
    second(Outputs(t), Outputs(s), batch)
    assert phi.calls == [4, 4, 3, 4, 4]  # same step: the negatives' features are reused
    first(Outputs(s), Outputs(t), Batch(lr, lr, bic.clone()))
    assert phi.calls[-1] == 3  # a new step's bicubic batch: computed again


def test_batch_too_small_for_negatives_is_an_error():
    loss = ContrastiveLoss(TinyFeatures(), WEIGHTS, num_negatives=4, negatives="other")
    with pytest.raises(Exception, match="more than 4"):
        loss(Outputs(images(4, 1)), Outputs(images(4, 2)), Batch(images(4, 3), images(4, 3), images(4, 4)))


def test_detached_teacher_trains_shared_weights_only_through_the_student():
    """The CL moves the 0.25 branch; with the teacher detached its width-1.0 pass adds no gradient, so only
    the weight slices the 0.25 branch uses receive one."""
    torch.manual_seed(0)
    branches = cssr(None, 2, "edsr_baseline", {"n_feats": 8, "n_resblocks": 1}, widths=(1.0, 0.25))
    net = branches["w1.0"].model.double()
    lr = images(3, 5, size=6)
    batch = Batch(lr, lr, nn.functional.interpolate(lr, scale_factor=2, mode="bicubic"))

    def grads(detach: bool, teacher_no_grad: bool = False):
        net.zero_grad()
        with torch.set_grad_enabled(not teacher_no_grad):
            teacher = Outputs(branches["w1.0"](lr))
        student = Outputs(branches["w0.25"](lr))
        ContrastiveLoss(TinyFeatures(), WEIGHTS, num_negatives=2, detach_teacher=detach)(student, teacher, batch).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    detached, reference_grads, attached = grads(True), grads(True, teacher_no_grad=True), grads(False)
    conv = "body.0.body.0.weight"  # 8 -> 8 conv: the 0.25 branch uses [:2, :2]
    assert all(torch.equal(detached[n], reference_grads[n]) for n in detached)
    assert detached[conv][:2, :2].abs().sum() > 0 and detached[conv][2:].abs().sum() == 0
    assert attached[conv][2:].abs().sum() > 0  # not detached: the teacher's own channels move too


def test_vgg19_from_timm_layers_and_torchvision_weights(tmp_path):
    random = vgg19_features(None)
    layers = [m for block in random.slices for m in block]
    assert [type(block[-1]).__name__ for block in random.slices] == ["ReLU"] * 5
    assert [sum(len(b) for b in random.slices[: j + 1]) - 1 for j in range(5)] == list(RELU_INDICES)
    assert [block[-2].out_channels for block in random.slices] == [64, 128, 256, 512, 512]
    assert not any(p.requires_grad for p in random.parameters())
    # a torchvision-format file: features.N.* plus the classifier, which is ignored
    g = torch.Generator().manual_seed(1)
    state = {f"features.{k}": torch.randn(v.shape, generator=g) for k, v in _features_state(random).items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loaded = vgg19_features(path)
    assert all(torch.equal(v, state[f"features.{k}"]) for k, v in _features_state(loaded).items())


def _features_state(extractor) -> dict[str, torch.Tensor]:
    """Keys as in vgg19.features (the slices re-numbered back to the Sequential's indices)."""
    out, offset = {}, 0
    for block in extractor.slices:
        for i, m in enumerate(block):
            for name, t in m.state_dict().items():
                out[f"{offset + i}.{name}"] = t
        offset += len(block)
    return out


def test_factory_warns_without_weights_and_keeps_vgg_out_of_checkpoints():
    with pytest.warns(UserWarning, match="RANDOM"):
        loss = csd(num_negatives=2)
    assert loss.state_dict() == {} and list(loss.parameters()) == []
    assert loss.needs.teacher and loss.needs.bicubic
    with pytest.raises(ValueError, match="5 values"):
        csd(layer_weights=(1.0, 1.0))


def test_bf16_vgg_gives_the_fp32_loss_and_gradient_to_bf16_precision():
    with pytest.warns(UserWarning, match="RANDOM"):
        fp32, bf16 = csd(num_negatives=2), csd(num_negatives=2, vgg_precision="bf16")
    assert fp32.features is bf16.features  # one shared VGG, only the autocast differs
    s, t, bic = (images(3, seed, size=32).float() for seed in (1, 2, 3))
    values, grads = [], []
    for loss in (fp32, bf16):
        anchor = s.clone().requires_grad_(True)
        value = loss(Outputs(anchor), Outputs(t), Batch(bic, bic, bic))
        value.backward()
        values.append(value.detach())
        grads.append(anchor.grad.flatten())
    assert values[1].dtype == torch.float32
    torch.testing.assert_close(values[1], values[0], rtol=0.01, atol=0)
    # bf16 keeps 8 mantissa bits through 13 conv layers and back: the direction agrees, not the last digits
    # (cosine about 0.94 on random and on natural images; 1.0 would mean the autocast did nothing)
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert 0.9 < cosine < 0.9999
