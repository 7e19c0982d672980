"""FACD (reconstruction): agreement with a loop re-computation of the formulas, the adaptive rule, contract."""

from __future__ import annotations

import math

import pytest
import torch

import kdsr
from facd_testing import TAPS, batch, outputs, permuted, permuted_batch
from kdsr import Batch, Outputs
from kdsr.plugins import registry


def build(**options) -> kdsr.Loss:
    return registry("loss").create("facd", {"student_taps": list(TAPS), **options})


def materialised(loss: kdsr.Loss, s: Outputs, t: Outputs, b: Batch) -> kdsr.Loss:
    with torch.no_grad():
        loss(s, t, b)
    return loss


def mixed_case(n: int = 4) -> tuple[Outputs, Outputs, Batch]:
    """Student 4 ch, teacher 8 ch; the teacher's SR beats the student's on items 0 and 2 only."""
    s, t, b = outputs(n=n, c=4, seed=0), outputs(n=n, c=8, seed=1), batch(n=n)
    g = torch.Generator().manual_seed(5)
    t.sr = b.hr + 0.01 * torch.randn(b.hr.shape, generator=g)
    s_noise = torch.tensor([0.1, 0.001, 0.1, 0.001])[:n].view(-1, 1, 1, 1)
    s.sr = b.hr + s_noise * torch.randn(b.hr.shape, generator=g)
    return s, t, b


# ---------------------------------------------------------------- the reference, one item at a time

def ref_vector(f: torch.Tensor, representation: str) -> torch.Tensor:
    """C x H x W -> pooled unit C-vector, or C x HW unit columns (one per position)."""
    if representation == "pooled":
        v = f.mean(dim=(1, 2))
        return v / v.norm()
    cols = f.reshape(f.shape[0], -1)
    return cols / cols.norm(dim=0, keepdim=True)


def ref_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of pooled vectors, or the mean over positions of the per-position cosines."""
    return (a * b).sum() if a.dim() == 1 else torch.einsum("cp,cp->p", a, b).mean()


def ref_patch_losses(anchor, positive, negatives, form: str, tau: float) -> list[torch.Tensor]:
    out = []
    for i in range(len(anchor)):
        others = [k for k in range(len(anchor)) if k != i]
        if form == "infonce":
            pos = math.e ** (ref_sim(anchor[i], positive[i]) / tau)
            neg = sum(math.e ** (ref_sim(anchor[i], negatives[k]) / tau) for k in others)
            out.append(-torch.log(pos / (pos + neg)))
        else:
            d_pos = (anchor[i] - positive[i]).abs().mean()
            d_neg = sum((anchor[i] - negatives[k]).abs().mean() for k in others)
            out.append(d_pos / (d_neg + 1e-7))
    return out


def ref_facd(loss, s: Outputs, t: Outputs, b: Batch, form="infonce", tau=0.1, representation="pooled", negatives="teacher", adaptive="teacher_better", margin=0.0):
    n = len(b.hr)
    mask = []
    for i in range(n):
        err_s, err_t = (s.sr[i] - b.hr[i]).abs().mean(), (t.sr[i] - b.hr[i]).abs().mean()
        mask.append(1.0 if adaptive == "always" or err_t < err_s - margin else 0.0)
    terms = []
    for dr, tap in zip(loss.dr, TAPS):
        w, bias = dr.weight[:, :, 0, 0], dr.bias
        anchors = [ref_vector(torch.einsum("oc,chw->ohw", w, s.taps[tap][i]) + bias[:, None, None], representation) for i in range(n)]
        positives = [ref_vector(t.taps[tap][i], representation) for i in range(n)]
        negs = positives if negatives == "teacher" else anchors
        per = ref_patch_losses(anchors, positives, negs, form, tau)
        terms.append(sum(m * v for m, v in zip(mask, per)) / n)
    return sum(terms) / len(terms)


CASES = [
    {},
    {"representation": "position"},
    {"form": "ratio"},
    {"form": "ratio", "representation": "position"},
    {"negatives": "student", "temperature": 0.5},
    {"adaptive": "always"},
    {"margin": 0.05},
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_facd_equals_the_formula(options: dict) -> None:
    s, t, b = mixed_case()
    loss = materialised(build(**options), s, t, b)
    ref_options = {("tau" if k == "temperature" else k): v for k, v in options.items()}
    expected = ref_facd(loss, s, t, b, **ref_options)
    assert torch.allclose(loss(s, t, b), expected, rtol=1e-4, atol=1e-7)


def test_facd_adaptive_rule_selects_patches_where_the_teacher_is_closer_to_hr() -> None:
    s, t, b = mixed_case()
    loss = materialised(build(), s, t, b)
    per_tap = [loss.per_patch(s.taps[k], t.taps[k], dr) for dr, k in zip(loss.dr, TAPS)]
    selected = sum(torch.tensor([1.0, 0.0, 1.0, 0.0]) @ p / 4 for p in per_tap) / 3
    assert torch.allclose(loss(s, t, b), selected)
    # a margin larger than every gap switches distillation off: exactly zero, still differentiable
    off = build(margin=1.0)
    s.taps = {k: v.requires_grad_(True) for k, v in s.taps.items()}
    value = materialised(off, s, t, b)(s, t, b)
    assert float(value.detach()) == 0.0
    value.backward()
    assert all(float(s.taps[k].grad.abs().sum()) == 0.0 for k in TAPS)


def test_facd_values_at_equal_features() -> None:
    """Ratio form: zero when DR(F_S) = F_T. InfoNCE has no zero: at equality it is the teacher batch's
    own term, log(1 + sum_{k != i} exp((cos(p_i, p_k) - 1) / tau)), which only vanishes for orthogonal features."""
    t = outputs(c=8, seed=1)
    s, b = outputs(c=8, seed=1, grad=True), batch()
    ratio = build(form="ratio", dr_layers=0, adaptive="always")(s, t, b)
    assert float(ratio.detach()) == pytest.approx(0.0, abs=1e-6)
    nce = build(dr_layers=0, adaptive="always", temperature=0.2)(s, t, b)
    expected = []
    for tap in TAPS:
        p = torch.nn.functional.normalize(t.taps[tap].mean(dim=(2, 3)), dim=1)
        cos = p @ p.T
        off = torch.exp((cos - 1) / 0.2) * (1 - torch.eye(len(p)))
        expected.append(torch.log1p(off.sum(dim=1)).mean())
    assert torch.allclose(nce, torch.stack(expected).mean(), rtol=1e-5)


@pytest.mark.parametrize("options", [{}, {"form": "ratio", "representation": "position"}])
def test_facd_permuted_batch_permutes_the_patch_losses(options: dict) -> None:
    s, t, b = mixed_case()
    loss = materialised(build(**options), s, t, b)
    perm = torch.tensor([2, 0, 3, 1])
    ps, pt, pb = permuted(s, perm), permuted(t, perm), permuted_batch(b, perm)
    for dr, tap in zip(loss.dr, TAPS):
        assert torch.allclose(loss.per_patch(ps.taps[tap], pt.taps[tap], dr), loss.per_patch(s.taps[tap], t.taps[tap], dr)[perm], rtol=1e-5)
    assert torch.allclose(loss(ps, pt, pb), loss(s, t, b), rtol=1e-5)


def test_facd_is_finite_and_trains_the_dr_head_and_student() -> None:
    s, t, b = mixed_case()
    s.taps = {k: v.requires_grad_(True) for k, v in s.taps.items()}
    loss = materialised(build(dr_layers=2, adaptive="always"), s, t, b)
    assert loss.dr[0].weight.shape == (8, 4, 1, 1) and loss.dr[0].weight2.shape == (8, 8, 1, 1)
    value = loss(s, t, b)
    assert torch.isfinite(value)
    value.backward()
    for tap, dr in zip(TAPS, loss.dr):
        assert s.taps[tap].grad.abs().sum() > 0
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in dr.parameters())


def test_facd_needs_two_patches() -> None:
    s, t, b = outputs(n=1, c=4), outputs(n=1, c=8, seed=1), batch(n=1)
    with pytest.raises(kdsr.KdsrError, match="batch_size >= 2"):
        build()(s, t, b)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"form": "cosine"}, "form"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"dr_layers": 5}, "dr_layers must be 0, 1 or 2"),
        ({"adaptive": "sometimes"}, "adaptive"),
    ],
)
def test_facd_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(kdsr.KdsrError, match=message):
        registry("loss").create("facd", options)
