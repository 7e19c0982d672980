"""The quickstart shows what kdsr is for, honestly: a teacher, a switchable student distilled from it,
an equal-size control trained from scratch, no term with random feature weights, no download."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdsr.config import load_config
from kdsr.engine.build import build_stage
from kdsr.report import branch_params, stage_caveats
from tests.conftest import ROOT, run_kdsr

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def stages():
    config = load_config(QUICKSTART)
    built = {}  # every plugin name and option resolved, as `kdsr validate` does
    torch.manual_seed(0)
    for i, sc in enumerate(config.stages):
        built[sc.name] = build_stage(config, i, built, load=False)
    return config, built


def test_shape_of_the_quickstart(stages):
    config, built = stages
    assert config.data.train.name == "samples" and all(e.name == "samples" for e in config.data.eval)  # no download
    teacher, scratch, distil = built["teacher"], built["scratch"], built["distil"]
    assert list(built)[-1] == "distil" and len(distil.trainable) >= 3  # several widths, routed by the report
    assert distil.config.student.init.from_stage == "teacher" and distil.config.teacher.from_stage == "teacher"
    narrow = [n for n in distil.trainable if n != "w1.0"]
    assert all(any(t.student == n and t.teacher == "teacher" for t in distil.terms) for n in narrow)  # distilled from it


def test_scratch_control_matches_the_smallest_branch(stages):
    config, built = stages
    distil, scratch = built["distil"], built["scratch"]
    smallest = min(distil.trainable.values(), key=branch_params)
    (control,) = scratch.trainable.values()
    assert branch_params(control) == branch_params(smallest)
    assert scratch.config.steps == distil.config.steps and scratch.config.teacher is None
    assert scratch.config.student.init is None  # from scratch


def test_no_random_feature_terms_and_the_line_that_turns_csd_on(stages):
    _, built = stages
    assert stage_caveats(built) == {}
    assert all(t.loss.__class__.__name__ != "ContrastiveLoss" for s in built.values() for t in s.terms)
    text = QUICKSTART.read_text()
    line = next(line.strip().lstrip("#").strip() for line in text.splitlines() if "name: csd" in line)
    assert "vgg_weights: /path/to/" in line and "weight: 200" in line


@pytest.mark.slow  # the whole quickstart: minutes
def test_quickstart_report_shows_distillation_paying(tmp_path):
    out = run_kdsr("run", str(QUICKSTART), f"out_dir={tmp_path / 'qs'}", timeout=3600)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "qs" / "report.json").read_text())
    psnr = {k: v["quality"]["chelsea"]["psnr"] for k, v in report["models"].items()}
    distilled = [k for k in psnr if k.startswith("distil.")]
    assert len(distilled) >= 3 and report["caveats"] == {}
    for k in distilled:
        assert psnr[k] > psnr["bicubic"] and psnr[k] > psnr["scratch"], psnr
    assert "dynamic" in report and (tmp_path / "qs" / "eval_curves.png").exists()
