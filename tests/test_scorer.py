"""Difficulty measures (ARM's edge score among them) and the learned per-patch scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdsr.builtin.policies import Budget
from kdsr.errors import KdsrError
from kdsr.inference import Router
from kdsr.scoring import MEASURES, LearnedScorer, edge_score, patch_features
from kdsr.tiling import windows
from tests.dynamic_kit import mosaic_folder, toy_branches


def test_edge_score_ranks_flat_above_edges_above_noise():
    flat = torch.full((1, 3, 16, 16), 0.5)
    step = flat.clone()
    step[..., 8:] = 0.9
    noisy = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert edge_score(flat) == 0.0 > edge_score(step) > edge_score(noisy)
    assert "edge" in MEASURES


def test_patch_features_are_finite_on_flat_and_tiny_patches():
    # 44x1: the last patch of an image one pixel wider than a multiple of the tile (crashed re-degradation at x4)
    for patch in (torch.full((1, 3, 8, 8), 0.3), torch.rand(1, 3, 2, 2), torch.rand(1, 3, 44, 1)):
        f = patch_features(patch, 4)
        assert f.shape == (len(MEASURES) + 3,) and np.isfinite(f).all()


def test_learned_scorer_recovers_a_linear_loss():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 4))
    losses = np.stack([features @ [1.0, -2.0, 0.0, 0.5] + 3.0, features @ [0.5, 0.0, 1.0, 0.0]], axis=1)
    scorer = LearnedScorer(ridge=0.0).fit(features, losses, ["a", "b"])
    assert np.allclose(scorer.predict(features[:5]), losses[:5], atol=1e-6)
    assert scorer.predict(features[0]).shape == (2,)
    assert scorer.ease(features[0]) == pytest.approx(-losses[0].mean())


def test_learned_scorer_ranks_patches_by_the_error_they_add_not_their_own_db():
    """A flat patch whose cheap output loses 3 dB at 45 dB adds less squared error than a textured one
    losing 1 dB at 25 dB; image PSNR is made of squared error, so the textured patch is the harder one."""
    from kdsr.builtin.policies import fit_scorer, mse_of
    from kdsr.inference import Choice

    assert mse_of(20 * np.log10(255.0)) == pytest.approx(1.0)  # 1 gray level RMS
    flat, textured = np.array([0.0, 1.0]), np.array([1.0, 0.0])  # one feature each kind of patch has
    rows = [{"features": f, "psnr": {"full": full, "cheap": full - lost}} for f, full, lost in [(flat, 45.0, 3.0), (textured, 25.0, 1.0)] * 3]
    rows[0] = {**rows[0], "features": np.array([0.1, 0.9])}  # not collinear with the intercept
    scorer = fit_scorer(rows, [Choice("cheap", 1.0), Choice("full", 4.0)])
    assert scorer.ease(flat) > scorer.ease(textured)


def test_learned_scorer_refuses_fewer_patches_than_features():
    with pytest.raises(KdsrError, match="calibration patch"):
        LearnedScorer().fit(np.zeros((3, 7)), np.zeros((3, 1)), ["a"])


def test_learned_budget_predicts_bigger_losses_on_textured_patches(tmp_path):
    branches, choices = toy_branches()
    policy = Budget(0.6, str(mosaic_folder(tmp_path / "cal", 4, seed=1)), "learned", "patch", 20)
    Router(branches, choices, policy, 2, tile=8, overlap=2)
    assert policy.scorer is not None and policy.scorer.branches == ["cheap"]
    flat = torch.full((1, 3, 8, 8), 0.4)
    x = torch.arange(8.0)
    grating = (0.5 + 0.25 * torch.sin(x * 1.3)).expand(1, 3, 8, 8).contiguous()
    assert policy.score(flat) > policy.score(grating)  # nearest loses more on texture than on flat content
    assert policy.select(flat, choices) == "cheap" and policy.select(grating, choices) == "full"


@pytest.mark.parametrize("measure", list(MEASURES))
def test_an_images_patches_are_scored_in_batches_as_one_by_one(measure):
    """Routing scores the cores of one shape as one batch (37x29 at tile 10: four shapes); each score is
    the measure of that core alone."""
    from kdsr.builtin.policies import Difficulty

    lr = torch.rand(1, 3, 37, 29, generator=torch.Generator().manual_seed(4))
    tiles = windows(37, 29, 10, 2)
    policy = Difficulty([0.0], measure, "patch")
    policy.scale = 4
    batched = policy.scores(lr, tiles)
    alone = [MEASURES[measure](lr[..., t.core[0] : t.core[1], t.core[2] : t.core[3]], 4) for t in tiles]
    assert batched == pytest.approx(alone, rel=1e-5, abs=1e-6)
    assert len({(t.core[1] - t.core[0], t.core[3] - t.core[2]) for t in tiles}) > 1


def test_gain_moves_pass_over_a_branch_that_buys_little_and_come_steepest_first():
    """Patch 0's middle branch removes 0.5 of its 10 per unit of price, the full one 10 for 3: it moves
    straight to the full branch; patch 1's middle branch removes 9 for 1, so it stops there first."""
    from kdsr.builtin.policies import gain_moves

    losses = np.array([[10.0, 9.5, 0.0], [10.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    moves, start = gain_moves(losses, [1.0, 2.0, 4.0])
    assert start == 0
    assert moves == [(9.0, 1, 1), (pytest.approx(10 / 3), 0, 2), (0.5, 1, 2), (0.0, 2, 2)]


def test_gain_moves_without_context_are_one_order_per_patch_and_steepest_first():
    """Without seams an image's tiles change nothing: the order is the rows' own, gains never rise along
    it, and each patch's moves go to wider branches in turn."""
    from kdsr.builtin.policies import gain_moves

    rng = np.random.default_rng(0)
    tiles = windows(30, 50, 12, 2)  # 3 x 5 patches, cores of three sizes
    for _ in range(20):
        losses = np.sort(rng.random((len(tiles), 4)) * 10, axis=1)[:, ::-1].copy()
        losses[:, -1] = 0.0
        moves, start = gain_moves(losses, [1.0, 2.5, 4.0, 6.0], tiles, 0)
        rows, rows_start = gain_moves(losses, [1.0, 2.5, 4.0, 6.0])
        assert start == rows_start == 0 and [(i, k) for _, i, k in moves] == [(i, k) for _, i, k in rows]
        gains = [g for g, _, _ in moves]
        assert gains == pytest.approx([g for g, _, _ in rows]) and all(a >= b - 1e-9 for a, b in zip(gains, gains[1:]))
        for i in range(len(tiles)):
            mine = [k for _, j, k in moves if j == i]
            assert mine == sorted(mine) and len(set(mine)) == len(mine)


def test_gain_moves_with_seams_join_the_neighbours_branch_before_opening_one():
    """Of two patches whose own gains are equal, the one whose neighbour is already on the full branch moves
    first: joining it removes a seam; the lone one's move pays the context of two new seams."""
    from kdsr.builtin.policies import gain_moves

    tiles = windows(10, 40, 10, 2)  # four patches in a row
    losses = np.array([[10.0, 0.0], [5.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    moves, _ = gain_moves(losses, [1.0, 4.0], tiles, 2)
    assert [i for _, i, _ in moves[:3]] == [0, 1, 3]  # 0 steepest; then 1 (beside 0), before 3 (beside 2, cheap)
    assert moves[1][0] > moves[2][0]  # the joined seam made 1's move steeper than 3's equal loss
    without, _ = gain_moves(losses, [1.0, 4.0], tiles, 0)
    assert [i for _, i, _ in without[:3]] == [0, 1, 3] and without[1][0] == without[2][0]


def test_gain_threshold_spends_the_budget_on_the_steepest_moves():
    from kdsr.builtin.policies import Budget, fit_gain_threshold
    from kdsr.inference import Choice

    choices = [Choice("cheap", 1.0), Choice("mid", 2.0), Choice("full", 4.0)]
    losses = np.array([[10.0, 9.5, 0.0], [10.0, 1.0, 0.0]])
    rows = [{"pixels": 1, "psnr": {"cheap": 30.0, "mid": 30.5, "full": 40.0}}, {"pixels": 1, "psnr": {"cheap": 30.0, "mid": 39.0, "full": 40.0}}]
    cost = {c.name: c.macs_per_pixel for c in choices}
    gain, expected = fit_gain_threshold(losses, rows, choices, 0.75, cost)  # 6 of 8: the first two moves
    assert gain == pytest.approx(10 / 3)
    assert expected["fraction"] == pytest.approx(0.75) and expected["psnr"] == pytest.approx((40.0 + 39.0) / 2)
    assert expected["shares"] == {"cheap": 0.0, "mid": 0.5, "full": 0.5}
    policy = Budget(0.75, "unused", "learned", "patch", 4)
    policy.ordered, policy.prices = choices, cost
    assert policy._levels(*policy._moves(losses), 2, gain=gain) == [2, 1]  # patch 0 skips the middle branch
    with pytest.raises(KdsrError, match="no routing reaches budget 0.2"):
        fit_gain_threshold(losses, rows, choices, 0.2, cost)  # the cheapest alone costs 0.25


def test_learned_budget_held_on_the_calibration_spends_what_it_expected(tmp_path):
    """hold: calibration with measure learned routes by the one calibrated gain: on the calibration folder
    itself it spends about what the calibration expected (cores there; context where branches meet here)."""
    from kdsr.data import ImageFolder, SRPairs, to_float

    branches, choices = toy_branches()
    cal = mosaic_folder(tmp_path / "cal", 4, seed=1)
    policy = Budget(0.6, str(cal), "learned", "patch", 20, hold="calibration")
    router = Router(branches, choices, policy, 2, tile=8, overlap=0)
    assert 0 < policy.gain < float("inf") and policy.expected["fraction"] <= 0.6 + 1e-9
    macs = full = 0.0
    for _, lr, _ in SRPairs(ImageFolder(cal), 2):
        routed = router(to_float(lr))
        macs, full = macs + routed.macs, full + routed.full_macs
    assert macs / full == pytest.approx(policy.expected["fraction"], abs=1e-9)
