"""ACF: per-channel gates give softmax weights over (HR, teacher); the loss trains the gates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hkdsr_testing import one_thread  # noqa: F401 - fixture
from kdsr_hkdsr.acf import ACF, ChannelGate

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gate_weights_are_a_softmax_over_the_two_sources() -> None:
    torch.manual_seed(0)
    w = ChannelGate()(torch.rand(2, 2, 5, 7))
    assert w.shape == (2, 2, 5, 7)
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(2, 5, 7))


def test_one_gate_per_channel_of_the_official_size() -> None:
    acf = ACF()
    assert len(acf.gates) == 3
    assert acf.gates[0] is not acf.gates[1]
    shapes = [tuple(p.shape) for p in acf.gates[0].parameters()]
    assert shapes == [(32, 2, 1, 1), (32,), (2, 32, 1, 1), (2,)]


def test_fused_target_is_the_gated_mix_channel_by_channel() -> None:
    torch.manual_seed(0)
    acf = ACF()
    hr, t = torch.rand(2, 3, 6, 5), torch.rand(2, 3, 6, 5)
    fused = acf.fuse(hr, t)
    for c in range(3):
        w = acf.gates[c](torch.stack([hr[:, c], t[:, c]], 1))
        torch.testing.assert_close(fused[:, c], w[:, 0] * hr[:, c] + w[:, 1] * t[:, c])
    # a convex mix: never outside the two sources
    assert (fused >= torch.minimum(hr, t) - 1e-6).all() and (fused <= torch.maximum(hr, t) + 1e-6).all()


def test_gradient_reaches_every_gate_and_the_student() -> None:
    torch.manual_seed(0)
    acf = ACF()
    s = torch.rand(2, 3, 6, 5, requires_grad=True)
    t, hr = torch.rand(2, 3, 6, 5), torch.rand(2, 3, 6, 5)
    loss = acf(s, t, hr)
    torch.testing.assert_close(loss, F.l1_loss(s, acf.fuse(hr, t)))
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    for gate in acf.gates:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())
