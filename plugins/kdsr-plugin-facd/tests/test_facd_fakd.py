"""FAKD: agreement with a loop/einsum re-computation of the official formula, chunking, contract."""

from __future__ import annotations

import math

import pytest
import torch

import kdsr
from facd_testing import TAPS, batch, outputs, permuted, permuted_batch
from kdsr.plugins import registry
from kdsr_facd.fakd import affinity_l1


def build(**options) -> kdsr.Loss:
    return registry("loss").create("fakd", {"student_taps": list(TAPS), **options})


def ref_pool(x: torch.Tensor, k: int, kind: str) -> torch.Tensor:
    """C x H x W, k x k windows with stride k, the last window clipped at the border (ceil mode)."""
    c, h, w = x.shape
    rows, cols = math.ceil(h / k), math.ceil(w / k)
    out = torch.empty(c, rows, cols)
    for r in range(rows):
        for q in range(cols):
            win = x[:, r * k : (r + 1) * k, q * k : (q + 1) * k].reshape(c, -1)
            out[:, r, q] = win.amax(dim=1) if kind == "max" else win.mean(dim=1)
    return out


def ref_affinity_l1(fs: torch.Tensor, ft: torch.Tensor, k: int = 1, kind: str = "max") -> torch.Tensor:
    """mean over images and position pairs of |cos_S(p, q) - cos_T(p, q)|, one image at a time."""
    total, count = 0.0, 0
    for i in range(len(fs)):
        mats = []
        for f in (fs[i], ft[i]):
            f = ref_pool(f, k, kind) if k > 1 else f
            cols = f.reshape(f.shape[0], -1)
            unit = cols / (torch.sqrt((cols**2).sum(dim=0)) + 1e-8)  # official eps
            mats.append(torch.einsum("cp,cq->pq", unit, unit))
        total = total + (mats[0] - mats[1]).abs().sum()
        count += mats[0].numel()
    return total / count


def ref_fakd(s, t, b, alpha: float, beta: float, k: int = 1, kind: str = "max") -> torch.Tensor:
    feature = sum(ref_affinity_l1(s.taps[n], t.taps[n], k, kind) for n in TAPS)
    return (1 - alpha) * (s.sr - b.hr).abs().mean() + alpha * (s.sr - t.sr).abs().mean() + beta * feature


@pytest.mark.parametrize("pool_size, pool_type", [(1, "max"), (2, "max"), (2, "avg"), (4, "max")])
def test_fakd_equals_the_formula(pool_size: int, pool_type: str) -> None:
    s, t, b = outputs(c=4, hw=(7, 5), seed=0), outputs(c=8, hw=(7, 5), seed=1), batch(hw=(7, 5))
    loss = build(pool_size=pool_size, pool_type=pool_type, alpha=0.3, beta=7.0, rgb_range=1.0)
    expected = ref_fakd(s, t, b, 0.3, 7.0, pool_size, pool_type)
    assert torch.allclose(loss(s, t, b), expected, rtol=1e-5, atol=1e-7)


def test_fakd_defaults_are_the_official_ones() -> None:
    loss = registry("loss").create("fakd", {})
    assert (loss.alpha, loss.beta, loss.pool_size, loss.rgb_range) == (0.5, 10.0, 1, 255.0)
    s, t, b = outputs(c=4, hw=(4, 4), seed=0, taps=loss.needs.student_taps), outputs(c=8, hw=(4, 4), seed=1, taps=loss.needs.student_taps), batch(hw=(4, 4))
    # the official loss on [0, 255] pixels, divided by 255: beta keeps the paper's balance between the terms
    feature = sum(ref_affinity_l1(s.taps[n], t.taps[n]) for n in loss.needs.student_taps)
    official = 0.5 * (255 * s.sr - 255 * b.hr).abs().mean() + 0.5 * (255 * s.sr - 255 * t.sr).abs().mean() + 10 * feature
    assert torch.allclose(loss(s, t, b), official / 255, rtol=1e-5)
    assert loss.needs.student_taps == ("body.2", "body.6", "upsampler.in") == loss.needs.teacher_taps


def test_fakd_chunking_changes_neither_value_nor_gradient() -> None:
    """Checkpointed chunks of 1 or 3 images give the whole-batch autograd result."""
    t = outputs(n=5, c=8, hw=(6, 6), seed=1).taps["body"]
    results = []
    for chunk in (1, 3, 5):
        s = outputs(n=5, c=4, hw=(6, 6), seed=0, grad=True).taps["body"]
        value = affinity_l1(s, t, images_per_chunk=chunk)
        value.backward()
        results.append((value.detach(), s.grad))
    s = outputs(n=5, c=4, hw=(6, 6), seed=0, grad=True).taps["body"]
    ref = ref_affinity_l1(s, t)
    ref.backward()
    for value, grad in results:
        assert torch.allclose(value, ref.detach(), rtol=1e-5)
        assert torch.allclose(grad, s.grad, rtol=1e-4, atol=1e-8)


def test_fakd_affinity_term_is_zero_for_equal_features_and_invariant_to_positive_scaling() -> None:
    loss = build()
    t = outputs(c=8, seed=1)
    same = outputs(c=8, seed=1)
    scaled = outputs(c=8, seed=1)
    scaled.taps = {k: v * torch.rand(1, 1, *v.shape[2:]).add(0.5) for k, v in scaled.taps.items()}  # per-position gain
    for s in (same, scaled):
        assert float(loss.affinity_term(s, t)) == pytest.approx(0.0, abs=1e-6)
    b = batch()
    assert torch.allclose(loss(same, t, b), 0.5 * (t.sr - b.hr).abs().mean())  # only the GT term remains


def test_fakd_gradients_reach_the_student_features_and_output() -> None:
    """The affinity term must keep its autograd history (a known bug of a third-party port)."""
    s, t = outputs(c=4, seed=0, grad=True), outputs(c=8, seed=1)
    value = build()(s, t, batch())
    assert torch.isfinite(value)
    value.backward()
    assert s.sr.grad is not None and s.sr.grad.abs().sum() > 0
    for tap in TAPS:
        assert torch.isfinite(s.taps[tap].grad).all() and s.taps[tap].grad.abs().sum() > 0


def test_fakd_does_not_depend_on_batch_order() -> None:
    loss = build(images_per_chunk=3)
    s, t, b = outputs(c=4), outputs(c=8, seed=1), batch()
    perm = torch.tensor([3, 1, 0, 2])
    assert torch.allclose(loss(s, t, b), loss(permuted(s, perm), permuted(t, perm), permuted_batch(b, perm)), rtol=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [({"alpha": 1.5}, "alpha must be in"), ({"pool_size": 0}, "pool_size"), ({"pool_type": "min"}, "pool_type"), ({"rgb_range": 0}, "rgb_range")],
)
def test_fakd_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(kdsr.KdsrError, match=message):
        registry("loss").create("fakd", options)
