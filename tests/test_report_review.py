"""Reports that tell the truth: caveats next to the numbers, per-term and eval curves, SR crops,
a dynamic-inference section for multi-branch models, and only what ran described."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdsr.report import describe_metric, label_offsets, render_markdown, stage_caveats
from tests.conftest import install_fake, run_kdsr, tiny_config, write_config

# A loss plugin that declares a caveat through the public API (``Loss.caveats``).
CAVEAT_LOSS = '''
import torch
from kdsr import Loss, hookimpl

def shaky_l1() -> Loss:
    """L1 that declares a caveat (a test plugin)."""
    class ShakyL1(Loss):
        def forward(self, student, teacher, batch):
            return torch.mean(torch.abs(student.sr - batch.hr))
    loss = ShakyL1()
    loss.caveats = ("shaky_l1 ran with random feature weights",)
    return loss

@hookimpl
def register_losses(register):
    register("shaky_l1", shaky_l1)
'''


@pytest.fixture(scope="module")
def switchable_run(tmp_path_factory) -> Path:
    """teacher -> a CSSR student of widths 1.0/0.5 (a caveat loss on w0.5), periodic eval, latency off."""
    tmp = tmp_path_factory.mktemp("review")
    site = tmp / "site"
    install_fake(site, "kdsr-shaky", "shaky_plugin", CAVEAT_LOSS, entry="shaky")
    cfg = tiny_config(tmp, steps=4)
    cfg["stages"][1] = {
        "name": "distil",
        "steps": 4,
        "teacher": {"from_stage": "teacher"},
        "student": {
            "constructor": "cssr",
            "options": {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1}, "widths": [1.0, 0.5]},
            "init": {"from_stage": "teacher"},
        },
        "losses": [{"name": "l1", "student": "w1.0"}, {"name": "output_kd", "student": "w0.5"}, {"name": "shaky_l1", "student": "w0.5"}],
        "log_every": 2,
        "eval_every": 2,
        "checkpoint_every": 2,
    }
    cfg["profile"]["latency"] = False
    out = run_kdsr("run", str(write_config(tmp / "c.yaml", cfg)), env={"PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    return tmp / "run"


def test_caveat_is_next_to_the_numbers(switchable_run):
    report = json.loads((switchable_run / "report.json").read_text())
    caveat = "shaky_l1 ran with random feature weights"
    assert report["caveats"] == {"distil": [caveat]}
    assert report["models"]["distil.w0.5"]["caveats"] == [caveat]
    assert report["models"]["distil.w1.0"]["caveats"] == [caveat]  # same weights: the shared network learnt from it
    assert report["models"]["teacher"]["caveats"] == [] and report["models"]["bicubic"]["caveats"] == []
    md = (switchable_run / "report.md").read_text()
    assert "| distil.w0.5 [1] |" in md and f"[1] {caveat}." in md and "| teacher |" in md


def test_only_what_ran_is_described(switchable_run):
    md = (switchable_run / "report.md").read_text()
    assert "Latency" not in md and "latency (s)" not in md  # profile.latency: false
    assert "self-ensemble" not in md
    assert "PSNR on Y (BT.601 MATLAB rgb2ycbcr, [16, 235]), shave 2 px" in md
    report = json.loads((switchable_run / "report.json").read_text())
    assert "latency" not in report["protocol"]
    for fig in ("psnr_vs_macs.png", "training_curves.png", "eval_curves.png"):
        assert fig in report["figures"] and (switchable_run / fig).stat().st_size > 0 and f"]({fig})" in md


def test_dynamic_inference_section(switchable_run):
    report = json.loads((switchable_run / "report.json").read_text())
    dyn = report["dynamic"]
    assert dyn["stage"] == "distil" and dyn["policy"] == "budget" and 0.5 < dyn["budget"] < 1
    (row,) = dyn["sets"].values()
    assert set(row["patches"]) == {"w0.5", "w1.0"} and sum(row["patches"].values()) == pytest.approx(1.0)
    assert 0.25 <= row["macs_fraction"] <= 1.0 and row["time_fraction"] > 0
    assert row["full_psnr"] == pytest.approx(report["models"]["distil.w1.0"]["quality"]["val"]["psnr"], abs=0.5)
    md = (switchable_run / "report.md").read_text()
    assert "## Budget routing (dynamic inference) over the branches of stage 'distil'" in md and "patches w0.5" in md


def test_per_term_losses_eval_steps_and_sr_crops_logged(switchable_run):
    records = [json.loads(line) for line in (switchable_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train" and r["stage"] == "distil"]
    assert {"l1", "output_kd", "shaky_l1", "loss"} <= set(train[-1])
    evals = [r for r in records if r["kind"] == "eval" and r["stage"] == "distil"]
    assert [r["step"] for r in evals] == [2, 4] and {"w1.0", "w0.5"} <= set(evals[0]["results"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(switchable_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"distil/train/shaky_l1", "distil/train/output_kd", "distil/train/l1"} <= set(tags["scalars"])
    assert {"distil/sr/w0.5", "distil/sr/w1.0", "distil/sr/hr", "distil/sr/bicubic"} <= set(tags["images"])
    assert [e.step for e in acc.Images("distil/sr/w0.5")] == [2, 4]


def test_labels_of_models_sharing_multi_adds_do_not_overlap():
    offsets = label_offsets([("a", 1.0, 30.0), ("b", 1.0, 30.01), ("c", 1.0, 29.0), ("d", 2.0, 31.0)])
    assert len({offsets[k] for k in "abc"}) == 3  # three labels at one Multi-Adds value: three positions
    assert offsets["c"][1] < offsets["a"][1] < offsets["b"][1]  # stacked in PSNR order


def test_inherited_caveats_and_metric_protocol():
    from types import SimpleNamespace as NS

    from kdsr.config import ModelSpec

    loss = NS(caveats=("random VGG",))
    teacher = NS(terms=[NS(loss=loss)], config=NS(teacher=None, student=NS(init=None)))
    student = NS(terms=[NS(loss=NS())], config=NS(teacher=ModelSpec(from_stage="teacher"), student=NS(init=None)))
    assert stage_caveats({"teacher": teacher, "student": student}) == {
        "teacher": ["random VGG"], "student": ["random VGG (through stage 'teacher')"]
    }
    assert describe_metric({"name": "psnr", "options": {"y_channel": False, "shave": 8}}, 2) == "PSNR on RGB, shave 8 px"
    assert describe_metric("ssim", 4) == "SSIM on Y (BT.601 MATLAB rgb2ycbcr, [16, 235]), shave 4 px"


def test_markdown_without_latency_dynamic_or_caveats():
    report = {
        "name": "r", "scale": 2, "caveats": {},
        "models": {"s": {"params": 10, "macs": 1e9, "quality": {"v": {"psnr": 30.0}}, "caveats": []}},
        "protocol": {"scoring": ["PSNR on RGB, shave 2 px"], "outputs": "8 bits", "lr": "bicubic", "self_ensemble": True, "macs": "fvcore"},
        "machine": {"device": "cpu", "cpu": "x", "threads": 1, "torch": "2"}, "plugins": {}, "figures": [],
    }
    md = render_markdown(report)
    assert "latency" not in md.lower() and "Caveats" not in md and "Dynamic" not in md and "![" not in md
    assert "x8 self-ensemble" in md and "| s | 0.000 M | 1 | 30.00 |" in md


def test_csd_without_vgg_file_declares_its_caveat():
    import warnings

    from kdsr.plugins import registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stderr warning is the old channel; the caveat reaches the report
        loss = registry("loss").create("csd", {"num_negatives": 2}, where="test")
    (caveat,) = loss.caveats
    assert "RANDOM VGG-19" in caveat and "vgg_weights" in caveat
    assert registry("loss").create("l1", {}, where="test").caveats == ()


def test_dynamic_section_says_when_the_budget_was_not_held():
    from kdsr.report import dynamic_markdown

    row = {"psnr": 30.0, "full_psnr": 30.1, "time_fraction": 0.3, "patches": {"w0.5": 0.5, "w1.0": 0.5}}
    dyn = {"stage": "s", "policy": "budget", "budget": 0.5, "measure": "redegradation", "tile": 64, "overlap": 16,
           "calibration": "4 training image(s)", "sets": {"A": {**row, "macs_fraction": 0.52}, "B": {**row, "macs_fraction": 0.3}}}
    text = "\n".join(dynamic_markdown(dyn))
    assert "The budget was not held (more than 10% off 0.5) on B (30.0%)" in text and "A (" not in text.split("not held")[1]
