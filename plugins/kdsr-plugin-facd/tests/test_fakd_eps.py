"""FAKD's per-position normalisation adds the official 1e-8 to the norm (1e-7 only when asked)."""

from __future__ import annotations

import pytest
import torch

from kdsr import Outputs
from kdsr_facd.fakd import affinity_l1, fakd, normalise_positions


def official_spatial_similarity(fm: torch.Tensor, eps: float) -> torch.Tensor:
    """``spatial_similarity`` of the official feature_transformation.py, written out: F / (||F||_c + eps), F^T F."""
    flat = fm.reshape(fm.shape[0], fm.shape[1], -1)
    unit = flat / (flat.pow(2).sum(1, keepdim=True).sqrt() + eps)
    return unit.transpose(1, 2) @ unit


def faint(seed: int) -> torch.Tensor:
    """Features whose positions have norms near 1e-8..1e-7, where the eps decides the affinity."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 4, 3, 3, generator=g, dtype=torch.float64) * 3e-8


def test_default_eps_is_the_official_1e_8():
    feat = faint(0)
    norm = feat.flatten(2).norm(dim=1, keepdim=True)
    torch.testing.assert_close(normalise_positions(feat), feat.flatten(2) / (norm + 1e-8), rtol=1e-12, atol=0)


@pytest.mark.parametrize("eps", [None, 1e-7])
def test_fakd_affinity_term_follows_the_official_formula(eps):
    s, t = faint(1), faint(2)
    official_eps = 1e-8 if eps is None else eps
    loss = fakd(student_taps=("a",), teacher_taps=("a",), **({} if eps is None else {"eps": eps}))
    got = loss.affinity_term(Outputs(torch.zeros(1), taps={"a": s}), Outputs(torch.zeros(1), taps={"a": t}))
    expected = (official_spatial_similarity(s, official_eps) - official_spatial_similarity(t, official_eps)).abs().mean()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    # the two eps give clearly different affinities on such features, so the test tells them apart
    other = 1e-7 if eps is None else 1e-8
    assert (affinity_l1(s, t, eps=other) - got).abs() > 1e-3 * got


def test_eps_must_be_positive():
    with pytest.raises(ValueError, match="eps"):
        fakd(eps=0)
