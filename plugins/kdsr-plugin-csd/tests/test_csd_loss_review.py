"""Review fixes of CSD's contrastive loss: the K negative distances as one batched reduction (same value and
gradient, graph size independent of K, channels_last no dearer) and the official cosine distance."""

from __future__ import annotations

import pytest
import torch

from kdsr import Batch, Outputs
from kdsr_csd import ContrastiveLoss, csd
from csd_testing import TinyFeatures

WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def images(b: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def negatives_of(i: int, k: int, b: int, mode: str) -> list[int]:
    return list(range(k)) if mode == "batch" else [(i + j) % b for j in range(1, k + 1)]


def l1_reference(fs, ft, fb, k, mode):
    """The K-pass formula: sum_j w_j mean|S - T| / (sum_k mean|S - N_k| + 1e-7), one pass per negative."""
    total = 0.0
    for w, a, p, neg in zip(WEIGHTS, fs, ft, fb):
        b = a.shape[0]
        d_neg = sum(
            torch.stack([(a[i] - neg[negatives_of(i, k, b, mode)[j]]).abs().mean() for i in range(b)]).mean()
            for j in range(k)
        )
        total = total + w * (a - p).abs().mean() / (d_neg + 1e-7)
    return total


def cos_reference(fs, ft, fb, k, mode):
    """Official ``cos_forward`` written out: cosine across the batch per position for the positive, summed
    per-image cosines over (B * C*H*W) for the negatives, then -log(exp(pos) / (exp(neg) + 1e-7))."""
    total = 0.0
    for w, a, p, neg in zip(WEIGHTS, fs, ft, fb):
        b = a.shape[0]
        dot = (a * p).sum(0)
        c_pos = (dot / (a.pow(2).sum(0).sqrt().clamp_min(1e-8) * p.pow(2).sum(0).sqrt().clamp_min(1e-8))).mean()
        c_neg = 0.0
        for i in range(b):
            for m in negatives_of(i, k, b, mode):
                x, y = a[i].flatten(), neg[m].flatten()
                c_neg = c_neg + (x / x.norm() * (y / y.norm())).sum()
        c_neg = c_neg / (b * a[0].numel())
        total = total + w * -torch.log(torch.exp(c_pos) / (torch.exp(c_neg) + 1e-7))
    return total


def run(loss, s, t, bicubic, layout=torch.contiguous_format):
    s_, t_, bic_ = (x.contiguous(memory_format=layout) for x in (s, t, bicubic))
    value = loss(Outputs(s_), Outputs(t_), Batch(bic_, bic_, bic_))
    return value, torch.autograd.grad(value, s)[0]


@pytest.mark.parametrize("distance", ["l1", "cos"])
@pytest.mark.parametrize(("mode", "b", "k"), [("batch", 4, 3), ("other", 5, 3)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_value_and_gradient_match_an_independent_recomputation(distance, mode, b, k, layout):
    phi = TinyFeatures()
    loss = ContrastiveLoss(phi, WEIGHTS, num_negatives=k, negatives=mode, distance=distance)
    s, t, bicubic = images(b, 1).requires_grad_(), images(b, 2), images(b, 4)
    value, grad = run(loss, s, t, bicubic, layout)

    s2 = s.detach().clone().requires_grad_()
    reference = l1_reference if distance == "l1" else cos_reference
    expected = reference(phi(s2 * 255), phi(t * 255), phi(bicubic * 255), k, mode)
    (expected_grad,) = torch.autograd.grad(expected, s2)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_channels_last_features_are_what_the_loss_sees():
    """The layout case above is real: TinyFeatures keeps channels_last, so the loss reads permuted views."""
    feats = TinyFeatures()(images(2, 1).contiguous(memory_format=torch.channels_last))
    assert all(f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous() for f in feats[:4])


def graph_nodes(t: torch.Tensor) -> list[str]:
    """Names of the autograd nodes the backward of ``t`` runs, sorted."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return sorted(type(n).__name__ for n in seen)


@pytest.mark.parametrize("distance", ["l1", "cos"])
def test_negative_distances_are_one_reduction_whatever_k_and_layout(distance):
    """K separate full-size passes grow the autograd graph with K (and their backward with it); one batched
    reduction does not, and channels_last features add only layout views (the input's conversion and one
    permute per layer), no extra arithmetic."""
    class Given(torch.nn.Module):  # the feature maps themselves, so the graph holds only the loss
        def forward(self, x):
            return [x * 1.0 for _ in WEIGHTS]

    nodes = {}
    for k in (2, 6):
        for layout in (torch.contiguous_format, torch.channels_last):
            s = images(8, 1).requires_grad_()
            loss = ContrastiveLoss(Given(), WEIGHTS, num_negatives=k, distance=distance)
            value = loss(Outputs(s.contiguous(memory_format=layout)), Outputs(images(8, 2)), Batch(s, s, images(8, 3)))
            nodes[k, layout] = graph_nodes(value)
    for layout in (torch.contiguous_format, torch.channels_last):
        assert nodes[2, layout] == nodes[6, layout]
    extra = list(nodes[2, torch.channels_last])
    for name in nodes[2, torch.contiguous_format]:
        extra.remove(name)
    assert sorted(extra) == ["CloneBackward0"] + ["PermuteBackward0"] * len(WEIGHTS)


def test_float32_distance_is_as_accurate_as_a_mean():
    """Large feature maps in float32: the batched distance stays within float32 rounding of a float64 sum
    (one vector-lane sum over all C*H*W values of an image would drift by ~1e-5)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 64, 96, 96, generator=g)
    p, n = torch.rand(4, 64, 96, 96, generator=g), torch.rand(2, 64, 96, 96, generator=g)
    loss = ContrastiveLoss(torch.nn.Identity(), WEIGHTS, num_negatives=2)
    for layout in (torch.contiguous_format, torch.channels_last):
        a_, p_, n_ = (x.contiguous(memory_format=layout) for x in (a, p, n))
        value = loss._l1(a_, p_, n_)
        a64, p64, n64 = a.double(), p.double(), n.double()
        expected = (a64 - p64).abs().mean() / (sum((a64 - n64[i]).abs().mean() for i in range(2)) + 1e-7)
        assert abs(value.item() / expected.item() - 1) < 1e-6


def test_csd_factory_takes_the_distance():
    with pytest.warns(UserWarning, match="RANDOM"):
        assert csd(distance="cos").distance == "cos"
    with pytest.raises(ValueError, match="'l1' or 'cos'"):
        csd(distance="l2")
