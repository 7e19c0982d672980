"""Per-patch routing: the default on images of several patches, equal to the chosen branch where every
patch picks it, batched per branch, over any branches of one scale (several stages, exported students)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from kdsr.builtin.policies import Difficulty, Fixed, Full
from kdsr.cli import main
from kdsr.engine.infer import make_router, with_candidates
from kdsr.errors import KdsrError
from kdsr.inference import Router, TimePrice, TimeShare, time_fraction
from kdsr.models import open_models
from kdsr.plain import PlainNetwork
from kdsr.plugins import registry
from kdsr.testing import make_image_folder
from kdsr.weights import save_weights
from tests.dynamic_kit import toy_branches
from tests.test_infer import run_dir  # noqa: F401 - the two-branch run fixture

ALL_CHEAP, ALL_FULL = [-1e9], [1e9]  # ease thresholds every / no patch passes


def test_per_patch_output_equals_the_branch_every_patch_picks():
    branches, choices = toy_branches()
    lr = torch.rand(1, 3, 30, 26, generator=torch.Generator().manual_seed(0))
    for thresholds, name in ((ALL_CHEAP, "cheap"), (ALL_FULL, "full")):
        routed = Router(branches, choices, Difficulty(thresholds, "gradient", "patch"), 2, tile=8, overlap=2)(lr)
        whole = branches[name](lr).clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        assert set(routed.tiles) == {name} and routed.tiles[name] == 16
        assert (routed.image == whole).all()


def half_textured(h: int, w: int) -> torch.Tensor:
    lr = torch.full((1, 3, h, w), 0.5)
    lr[..., :, w // 2 :] = torch.rand(1, 3, h, w - w // 2, generator=torch.Generator().manual_seed(1))
    return lr


def test_auto_routes_patches_of_large_images_and_small_images_whole():
    branches, choices = toy_branches()
    policy = Difficulty([-5.0], "gradient", "auto")  # flat -> cheap, noise -> full
    router = Router(branches, choices, policy, 2, tile=8, overlap=2)
    assert set(router(half_textured(16, 32)).tiles) == {"cheap", "full"}  # 8 patches: per patch
    small = router(half_textured(8, 16))  # 2 patches: one branch for the image
    assert len(small.tiles) == 1 and sum(small.tiles.values()) == 2
    assert Difficulty([-5.0], "gradient", "image").routes_patches(100) is False


def count_calls(router: Router) -> dict[str, int]:
    """Wrap the router's runners so each forward pass is counted (branch -> passes so far); the time
    prices, which routing measures once on probes of its own, are measured first."""
    router.time_prices()
    calls = {name: 0 for name in router.runners}

    def counted(name, run):
        def forward(x):
            calls[name] += 1
            return run(x)

        return forward

    router.runners = {name: counted(name, run) for name, run in router.runners.items()}
    return calls


def test_patches_of_one_branch_run_batched():
    branches, choices = toy_branches()
    router = Router(branches, choices, Difficulty([-5.0], "gradient", "patch"), 2, tile=8, overlap=2, batch=8)
    calls = count_calls(router)
    routed = router(half_textured(8, 64))  # one row of 8 patches: 4 flat, 4 textured
    assert routed.tiles == {"cheap": 4, "full": 4}
    assert calls == {"full": 1, "cheap": 1}  # one forward pass per branch, not per patch


def test_time_fraction_prices_patches_by_measured_latency():
    branches, choices = toy_branches()
    router = Router(branches, choices, Difficulty([-5.0], "gradient", "patch"), 2, tile=8, overlap=2)
    prices = router.time_prices()
    assert set(prices) == {"full", "cheap"} and all(p.per_pixel > 0 and p.per_pass >= 0 for p in prices.values())
    assert router.latencies() == {name: p.per_pixel for name, p in prices.items()}
    router.correct_prices = False  # the prices below as they are (test_timed_passes_correct_the_probed_prices)
    router._prices, router._blend_price = {"full": TimePrice(4.0), "cheap": TimePrice(1.0)}, 0.0  # a quarter of the time per pixel
    routed = router(half_textured(8, 64))
    px = routed.pixels
    assert routed.seconds == pytest.approx(px["cheap"] * 1.0 + px["full"] * 4.0)
    assert routed.full_seconds == pytest.approx(routed.full_pixels * 4.0) and routed.policy_seconds > 0
    router._blend_price = 0.5  # the seams' cross-fade, per HR pixel (x2: 4 per LR pixel)
    assert router(half_textured(8, 64)).seconds == pytest.approx(routed.seconds + 0.5 * 8 * 64 * 4)


def test_time_prices_count_forward_passes():
    branches, choices = toy_branches()
    router = Router(branches, choices, Difficulty([-5.0], "gradient", "patch"), 2, tile=8, overlap=2, batch=2, merge=False)
    calls = count_calls(router)
    routed = router(half_textured(8, 64))  # 4 flat + 4 textured patches, 2 windows per pass
    assert dict(routed.passes) == calls == {"cheap": 2, "full": 2}
    assert routed.full_passes == 4  # the full branch over all 8 patches, 2 per pass
    router.correct_prices = False
    router._prices, router._blend_price = {"full": TimePrice(4.0, 100.0), "cheap": TimePrice(1.0, 50.0)}, 0.0
    px = routed.pixels
    spent, full = px["cheap"] * 1.0 + 2 * 50.0 + px["full"] * 4.0 + 2 * 100.0, routed.full_pixels * 4.0 + 4 * 100.0
    routed = router(half_textured(8, 64))
    assert (routed.seconds, routed.full_seconds) == (pytest.approx(spent), pytest.approx(full))
    assert time_fraction(routed.seconds, routed.full_seconds) == pytest.approx(spent / full)
    groups, _ = router.select_tiles(half_textured(8, 64))
    assert router.spend(groups, 8, 64, time=True) == pytest.approx(spent / full)
    assert router.spend(groups, 8, 64, time=True, extra_seconds=30.0) == pytest.approx((spent + 30.0) / full)


def test_timed_passes_correct_the_probed_prices():
    branches, choices = toy_branches()
    router = Router(branches, choices, Difficulty([-5.0], "gradient", "patch"), 2, tile=8, overlap=2)
    probed = router.time_prices()
    slow = router.runners["cheap"]

    def slower(x):  # the machine got slower for this branch after the probe: 2 ms more per pass
        time.sleep(0.002)
        return slow(x)

    router.runners["cheap"] = slower
    lr = half_textured(8, 64)
    router(lr)  # first passes of each window shape: what a new shape costs once, not counted
    assert router.correction("cheap") == 1.0 and router.time_prices()["cheap"] == probed["cheap"]
    for _ in range(40):
        router(lr)
    # evidence of the slowdown outweighs the probe (counted as LATENCY_REPEATS passes at its own price)
    assert router.correction("cheap") > 1.5 and router.time_prices()["cheap"].per_pixel > 1.5 * probed["cheap"].per_pixel
    assert router.describe()["time_prices"]["cheap"]["correction"] == router.correction("cheap")
    router.correct_prices = False
    assert router.time_prices() == probed


def export_student(path, n_feats: int, scale: int = 2):
    model = registry("backbone").create("edsr_baseline", {"n_feats": n_feats, "n_resblocks": 1}, scale=scale)
    plain = PlainNetwork("edsr_baseline", {"n_feats": n_feats, "n_resblocks": 1}, scale, model.state_dict())
    save_weights(model.state_dict(), path, plain.metadata())
    return path


def test_exported_students_of_several_runs_are_routed_together_by_cost(tmp_path, capsys):
    wide, narrow = export_student(tmp_path / "wide.safetensors", 8), export_student(tmp_path / "narrow.safetensors", 4)
    models = with_candidates(open_models(wide), [narrow])
    assert list(models.candidates) == ["wide", "narrow"]
    router = make_router(models, "difficulty", {"thresholds": [-5.0], "measure": "gradient"}, tile=8, overlap=2)
    assert [c.name for c in router.choices] == ["narrow", "wide"]  # ordered by cost, cheapest first
    images = make_image_folder(tmp_path / "lr", n=1, size=(32, 32), seed=3)
    out = tmp_path / "out"
    argv = ["infer", str(wide), str(images), "--out", str(out), "--also", str(narrow), "--policy", "difficulty",
            "--policy-option", "thresholds=[-5.0]", "--policy-option", "measure=gradient", "--tile", "8", "--overlap", "2", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [b["name"] for b in summary["router"]["branches"]] == ["narrow", "wide"]
    assert sum(summary["images"][0]["branches"].values()) == 16 and summary["time_fraction"] > 0


def test_branches_of_different_scales_are_refused_in_one_line(tmp_path, capsys):
    x2, x3 = export_student(tmp_path / "a.safetensors", 4), export_student(tmp_path / "b.safetensors", 4, scale=3)
    with pytest.raises(KdsrError, match=r"branches of different scales: .* is x2, .* is x3"):
        with_candidates(open_models(x2), [x3])
    images = make_image_folder(tmp_path / "lr", n=1, size=(16, 16), seed=3)
    assert main(["infer", str(x2), str(images), "--out", str(tmp_path / "o"), "--also", str(x3)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "different scales" in err


def test_every_stage_of_a_run_can_be_routed(tmp_path, capsys):
    from tests.conftest import tiny_config, write_config

    assert main(["run", str(write_config(tmp_path / "c.yaml", tiny_config(tmp_path, steps=2))), "--quiet"]) == 0
    run = tmp_path / "run"
    capsys.readouterr()  # the run's own output
    models = with_candidates(open_models(run), all_stages=True)
    assert {name.split("/")[0] for name in models.candidates} == {"teacher", "student"}
    out = tmp_path / "out"
    argv = ["infer", str(run), str(tmp_path / "val"), "--out", str(out), "--all-stages", "--policy", "difficulty",
            "--policy-option", "thresholds=[-5.0]", "--policy-option", "measure=gradient", "--tile", "8", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {b["name"].split("/")[0] for b in summary["router"]["branches"]} == {"teacher", "student"}


def test_tradeoff_labels_every_measure_and_budget_against_multi_adds_and_time(run_dir, capsys):
    cal = str(run_dir.parent / "train")
    argv = ["tradeoff", str(run_dir), "--calibration", cal, "--budgets", "0.5", "--measure", "gradient,learned",
            "--grid", "4", "--tile", "12", "--overlap", "4", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in result["points"]] == ["fixed wide", "fixed narrow", "budget 0.5 gradient", "budget 0.5 learned"]
    assert all({"macs_fraction", "time_fraction"} <= set(p["scores"]["val"]) for p in result["points"])
    assert result["cost"] == "macs" and (run_dir / "tradeoff.png").stat().st_size > 0
    assert "| budget 0.5 learned |" in (run_dir / "report.md").read_text()


def test_branches_are_priced_only_when_a_plan_uses_them():
    branches, choices = toy_branches()
    router = Router(branches, choices, Difficulty([-5.0], "gradient", "patch"), 2, tile=8, overlap=2)
    assert set(router.time_prices(["cheap"])) == {"cheap"} and set(router._prices) == {"cheap"}
    router = Router(branches, choices, Full(), 2, tile=8, overlap=2)
    share, full_only = TimeShare(), [router(half_textured(8, 64)) for _ in range(2)]
    for routed in full_only:
        assert routed.full_only and routed.policy_seconds == 0.0
        share.add(routed)
    assert share.fraction == 1.0 and router._prices == {}  # never left the full branch: nothing probed
    router.policy = Fixed("cheap", None)
    cheap = router(half_textured(8, 64))
    share.add(cheap)  # something else ran: the full-only images are priced too, like with like
    assert not cheap.full_only and set(router._prices) == {"cheap", "full"}
    full = full_only[0].full_seconds
    assert full_only[0].seconds == full and cheap.full_seconds == pytest.approx(full)
    assert share.fraction == pytest.approx((cheap.seconds + 2 * full) / (3 * full))
