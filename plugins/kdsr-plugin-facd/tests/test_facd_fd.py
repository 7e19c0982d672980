"""FD (FitNet-style): contract, the lazy adaptor, and agreement with the formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdsr
from facd_testing import TAPS, batch, outputs, permuted, permuted_batch
from kdsr.plugins import registry
from kdsr_facd.adaptor import LazyAdaptor


def build(**options) -> kdsr.Loss:
    return registry("loss").create("fd", {"student_taps": list(TAPS), **options})


def test_fd_declares_its_taps_and_teacher() -> None:
    loss = build(teacher_taps=["body.1", "body.3", "body"])
    assert loss.needs.teacher
    assert loss.needs.student_taps == TAPS
    assert loss.needs.teacher_taps == ("body.1", "body.3", "body")


def test_fd_is_zero_when_features_match_without_adaptor_and_positive_otherwise() -> None:
    loss = build(adaptor_layers=0)
    s = outputs(c=8, seed=0, grad=True)
    same = loss(s, outputs(c=8, seed=0), batch())
    assert float(same.detach()) == 0.0
    other = loss(s, outputs(c=8, seed=1), batch())
    assert float(other.detach()) > 0
    other.backward()
    assert all(s.taps[t].grad is not None and s.taps[t].grad.abs().sum() > 0 for t in TAPS)


def test_fd_equals_the_formula_with_its_adaptor() -> None:
    """mean over taps of L1 (or L2) between conv1x1(F_S) and F_T, recomputed from the adaptor's weights."""
    s, t = outputs(c=4, seed=0), outputs(c=8, seed=1)
    for distance, dist in (("l1", lambda a, b: (a - b).abs().mean()), ("l2", lambda a, b: ((a - b) ** 2).mean())):
        loss = build(distance=distance)
        value = loss(s, t, batch())
        expected = []
        for adaptor, tap in zip(loss.adaptors, TAPS):
            mapped = torch.einsum("oc,nchw->nohw", adaptor.weight[:, :, 0, 0], s.taps[tap]) + adaptor.bias[None, :, None, None]
            expected.append(dist(mapped, t.taps[tap]))
        assert torch.allclose(value, torch.stack(expected).mean(), rtol=1e-5)


def test_fd_adaptor_is_lazy_until_the_first_batch_then_sized_from_the_features() -> None:
    loss = build(adaptor_layers=2)
    assert any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in loss.parameters())
    with torch.no_grad():
        loss(outputs(c=4), outputs(c=12, seed=1), batch())
    adaptor = loss.adaptors[0]
    assert isinstance(adaptor, LazyAdaptor)
    assert adaptor.weight.shape == (12, 4, 1, 1) and adaptor.weight2.shape == (12, 12, 1, 1)
    assert not any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in loss.parameters())


def test_fd_adaptor_weights_train() -> None:
    torch.manual_seed(0)
    loss = build()
    s, t = outputs(c=4, grad=True), outputs(c=8, seed=1)
    with torch.no_grad():
        loss(s, t, batch())
    before = [p.detach().clone() for p in loss.parameters()]
    opt = torch.optim.Adam([*loss.parameters()], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss(s, t, batch()).backward()
        opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, loss.parameters()))


def test_fd_does_not_depend_on_batch_order() -> None:
    loss = build()
    s, t, b = outputs(c=4), outputs(c=8, seed=1), batch()
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(loss(s, t, b), loss(permuted(s, perm), permuted(t, perm), permuted_batch(b, perm)), rtol=1e-6)


def test_fd_without_adaptor_names_the_width_mismatch() -> None:
    with pytest.raises(kdsr.KdsrError, match="4 channels but the teacher's has 8"):
        build(adaptor_layers=0)(outputs(c=4), outputs(c=8), batch())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"distance": "l3"}, "distance"),
        ({"adaptor_layers": 3}, "adaptor_layers must be 0, 1 or 2"),
        ({"teacher_taps": ["body"]}, "but teacher_taps has 1"),
        ({"student_taps": []}, "at least one tap"),
        ({"adaptor": 1}, "unknown option 'adaptor'"),
    ],
)
def test_fd_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(kdsr.KdsrError, match=message):
        registry("loss").create("fd", options)


def test_fd_l2_is_mse() -> None:
    loss = build(distance="l2", adaptor_layers=0)
    s, t = outputs(seed=0), outputs(seed=1)
    expected = torch.stack([F.mse_loss(s.taps[k], t.taps[k]) for k in TAPS]).mean()
    assert torch.allclose(loss(s, t, batch()), expected)
