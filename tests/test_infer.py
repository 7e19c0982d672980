"""`kdsr infer` / `kdsr eval --policy`: routing images and tiles to branches, and what they cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdsr import Branch, hookimpl
from kdsr.builtin.policies import fit_thresholds
from kdsr.cli import main
from kdsr.inference import Choice, gradient_energy, local_variance, redegradation_psnr
from kdsr.plugins import get_plugins
from kdsr.testing import make_image_folder
from tests.conftest import tiny_config, write_config


class TwoWidths:
    """A student constructor with two independent branches standing in for widths 1.0 / 0.5."""

    @hookimpl
    def register_students(self, register):
        def two_widths(teacher, scale: int) -> dict[str, Branch]:
            """Two EDSR branches of different width (test plugin)."""
            from kdsr_zoo.edsr import edsr_baseline

            return {
                "wide": Branch(edsr_baseline(scale, n_feats=8, n_resblocks=1)),
                "narrow": Branch(edsr_baseline(scale, n_feats=4, n_resblocks=1)),
            }

        register("two_widths_test", two_widths)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    plugins = get_plugins()
    if "two_widths_test" not in plugins.registry("student"):
        assert plugins.add(TwoWidths(), "two-widths-test").ok
    tmp = tmp_path_factory.mktemp("infer")
    cfg = tiny_config(tmp, steps=3)
    cfg["stages"] = [
        {
            "name": "multi",
            "steps": 3,
            "student": {"constructor": "two_widths_test"},
            "losses": [{"name": "l1", "student": "wide"}, {"name": "l1", "student": "narrow"}],
        }
    ]
    assert main(["run", str(write_config(tmp / "c.yaml", cfg)), "--quiet"]) == 0
    make_image_folder(tmp / "lr", n=2, size=(45, 37), seed=5)
    return tmp / "run"


def read(out: Path) -> dict:
    return json.loads((out / "infer.json").read_text())


def test_infer_full_and_fixed(run_dir, tmp_path):
    lr = run_dir.parent / "lr"
    assert main(["infer", str(run_dir), str(lr), "--out", str(tmp_path / "full"), "--tile", "16", "--overlap", "4"]) == 0
    summary = read(tmp_path / "full")
    assert len(summary["images"]) == 2 and summary["macs_fraction"] == pytest.approx(1.0)
    img = summary["images"][0]
    assert set(img["branches"]) == {"wide"} and img["tiling_overhead"] > 0
    from PIL import Image

    assert Image.open(img["output"]).size == (37 * 2, 45 * 2)
    assert main(["infer", str(run_dir), str(lr / "img0.png"), "--out", str(tmp_path / "n"), "--branch", "narrow", "--tile", "0"]) == 0
    narrow = read(tmp_path / "n")
    assert set(narrow["images"][0]["branches"]) == {"narrow"} and 0 < narrow["macs_fraction"] < 0.5


def test_tiled_routing_matches_whole_image_for_one_branch(run_dir, tmp_path):
    lr = run_dir.parent / "lr"
    main(["infer", str(run_dir), str(lr / "img1.png"), "--out", str(tmp_path / "a"), "--tile", "0", "--branch", "wide"])
    main(["infer", str(run_dir), str(lr / "img1.png"), "--out", str(tmp_path / "b"), "--tile", "8", "--overlap", "6", "--branch", "wide"])
    from kdsr.data import read_image

    a, b = read_image(tmp_path / "a" / "img1.png"), read_image(tmp_path / "b" / "img1.png")
    assert torch.equal(a, b)  # 3 convs at LR (radius 3) + upsampler: overlap 6 is enough


def test_difficulty_per_patch_routes_by_score(run_dir, tmp_path):
    lr = run_dir.parent / "lr"
    # a threshold between the scores of the tiles sends some tiles to each branch
    argv = ["infer", str(run_dir), str(lr), "--out", str(tmp_path / "d"), "--tile", "12", "--overlap", "4",
            "--policy", "difficulty", "--policy-option", "thresholds=[-20.0]", "--policy-option", "measure=gradient",
            "--policy-option", "per=patch", "--json"]
    assert main(argv) == 0
    summary = read(tmp_path / "d")
    used = {b for i in summary["images"] for b in i["branches"]}
    assert used <= {"wide", "narrow"}
    assert 0 < summary["macs_fraction"] <= 1.0


def test_eval_with_budget_policy_respects_budget(run_dir, capsys):
    lr = str(run_dir.parent / "val")
    argv = ["eval", str(run_dir), "--json", "--policy", "budget", "--policy-option", "budget=0.6",
            "--policy-option", f"calibration={lr}", "--policy-option", "grid=4", "--tile", "12", "--overlap", "4"]
    assert main(argv) == 0
    (res,) = json.loads(capsys.readouterr().out).values()
    scores = res["val"]
    assert {"psnr", "ssim", "macs_fraction"} <= set(scores)
    assert scores["macs_fraction"] <= 0.6 + 1e-6  # calibrated on the same images: the budget holds exactly


def test_fit_thresholds_picks_best_psnr_within_budget():
    choices = [Choice("full", 10.0, 1.0), Choice("cheap", 2.0, 0.25)]
    rows = [  # easy tiles lose little with the cheap branch, hard ones a lot
        {"score": 40.0, "pixels": 1, "psnr": {"full": 40.0, "cheap": 39.9}},
        {"score": 35.0, "pixels": 1, "psnr": {"full": 35.0, "cheap": 34.5}},
        {"score": 20.0, "pixels": 1, "psnr": {"full": 25.0, "cheap": 22.0}},
        {"score": 10.0, "pixels": 1, "psnr": {"full": 20.0, "cheap": 15.0}},
    ]
    thresholds, expected = fit_thresholds(rows, choices, budget=0.6, grid=4)
    # two cheap (easiest) + two full = (2*2 + 2*10) / 40 = 0.6
    assert expected["fraction"] == pytest.approx(0.6)
    assert thresholds == [20.0]  # score > 20 -> cheap


def test_measures_order_easy_before_hard():
    flat = torch.full((1, 3, 24, 24), 0.5)
    g = torch.Generator().manual_seed(0)
    noisy = torch.rand(1, 3, 24, 24, generator=g)
    for measure in (redegradation_psnr, gradient_energy, local_variance):
        assert measure(flat, 2) > measure(noisy, 2)


def test_bad_inputs_exit_2_and_others_still_written(run_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    make_image_folder(folder, n=2, size=(20, 20), seed=9)
    (folder / "broken.png").write_bytes(b"not a png")
    code = main(["infer", str(run_dir), str(folder), "--out", str(tmp_path / "o"), "--tile", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "broken.png" in err and "the other 2 were written" in err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["img0.png", "img1.png"]
    assert json.loads((tmp_path / "o" / "infer.json").read_text())["failed"][0]["input"].endswith("broken.png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["infer", str(run_dir), str(folder / "img0.png"), "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err
    assert main(["infer", str(run_dir), str(folder / "img0.png"), "--out", str(tmp_path / "w"), "--width", "0.3"]) == 2
    assert "no branch of width 0.3" in capsys.readouterr().err


def test_tradeoff_curve(run_dir, capsys):
    cal = str(run_dir.parent / "train")
    assert main(["tradeoff", str(run_dir), "--calibration", cal, "--budgets", "0.4,0.8", "--grid", "4", "--tile", "12", "--overlap", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    kinds = [(p["kind"], p.get("branch", p.get("budget"))) for p in result["points"]]
    assert kinds == [("fixed", "wide"), ("fixed", "narrow"), ("budget", 0.4), ("budget", 0.8)]
    fixed = {p["branch"]: p["scores"]["val"]["macs_fraction"] for p in result["points"] if p["kind"] == "fixed"}
    assert fixed["wide"] == pytest.approx(1.0) and fixed["narrow"] < 0.4
    assert (run_dir / "tradeoff.png").exists()
    report = (run_dir / "report.md").read_text()
    assert "| budget 0.4 |" in report and "![PSNR vs Multi-Adds fraction](tradeoff.png)" in report
    assert main(["tradeoff", str(run_dir), "--calibration", cal, "--budgets", "0.5", "--grid", "4", "--tile", "12", "--overlap", "4"]) == 0
    report = (run_dir / "report.md").read_text()  # a second trade-off replaces the first, the rest stays
    assert report.count("## Dynamic inference") == 1 and "| budget 0.5 |" in report and "| budget 0.4 |" not in report
    assert "PSNR" in report.split("## Dynamic inference")[0]


def test_routing_reads_the_branches_multi_adds_from_the_runs_report(run_dir, tmp_path, monkeypatch):
    """A report that counted the trained branches at a 1280x720 output gives routing their Multi-Adds
    (report rows ``stage.branch``); one counted at another size (this run's, 32x32), or none, is counted again."""
    import shutil

    from kdsr.engine.infer import choices_for, make_router
    from kdsr.models import open_models
    from kdsr.profiling import HR_720P, lr_size_for

    models = open_models(run_dir)
    assert models.config.profile.hr_size == (32, 32) and models.macs_per_pixel == {}
    counted = {c.name: c.macs_per_pixel for c in choices_for(models.candidates, models.scale)}
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    resolved = (copy / "config.resolved.yaml").read_text()
    (copy / "config.resolved.yaml").write_text(resolved.replace("hr_size:\n  - 32\n  - 32\n", "hr_size:\n  - 720\n  - 1280\n", 1))
    report = json.loads((copy / "report.json").read_text())
    h, w = lr_size_for(HR_720P, models.scale)
    for name in counted:  # as a report at 720p counts them: twice the real ones, to see which are used
        report["models"][f"multi.{name}"]["macs"] = 2 * counted[name] * h * w
    (copy / "report.json").write_text(json.dumps(report))
    reported = open_models(copy)
    assert reported.macs_per_pixel == pytest.approx({name: 2 * m for name, m in counted.items()})
    with monkeypatch.context() as patch:  # nothing is counted again
        patch.setattr("kdsr.engine.infer.macs_per_lr_pixel", lambda *a, **k: pytest.fail("counted again"))
        choices = make_router(reported, "full").choices
    assert {c.name: c.macs_per_pixel for c in choices} == pytest.approx(reported.macs_per_pixel)
    (copy / "report.json").unlink()
    assert open_models(copy).macs_per_pixel == {}
