"""An eval image too small for a metric (6x6; SSIM needs 11x11) is skipped with a warning naming
it, for every branch alike; the run and `kdsr eval` still finish (issue 15.12)."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from PIL import Image

from kdsr.branches import Branch
from kdsr.cli import main
from kdsr.engine.evaluate import EvalSet, evaluate
from kdsr.plugins import registry
from kdsr.testing import make_image_folder
from tests.robust_kit import one_stage


def _pair(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return hr[:, ::2, ::2].contiguous(), hr


def test_small_image_is_skipped_for_every_branch(caplog):
    metrics = {"psnr": registry("metric").create("psnr"), "ssim": registry("metric").create("ssim")}
    good = [("a.png", *_pair(32, 32, 0)), ("b.png", *_pair(24, 40, 1))]
    tiny = ("tiny.png", *_pair(6, 6, 2))
    net = registry("backbone").create("edsr_baseline", {"n_feats": 4, "n_resblocks": 1}, scale=2)
    branches = {"net": Branch(net)}
    with caplog.at_level(logging.WARNING, logger="kdsr"):
        mixed = evaluate(branches, [EvalSet("set", [good[0], tiny, good[1]])], metrics, 2, torch.device("cpu"), progress=False)
    assert evaluate(branches, [EvalSet("set", good)], metrics, 2, torch.device("cpu"), progress=False) == mixed
    warned = [r.getMessage() for r in caplog.records if "tiny.png" in r.getMessage()]
    assert len(warned) == 1 and "eval set 'set'" in warned[0] and "11x11" in warned[0]


def test_run_and_eval_finish_with_a_small_image_in_the_eval_folder(tmp_path, capsys, caplog):
    cfg = one_stage(tmp_path, steps=2)
    val = tmp_path / "val"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(val / "small.png")
    with caplog.at_level(logging.WARNING, logger="kdsr"):
        assert main(["run", str(cfg), "--quiet"]) == 0, capsys.readouterr().err
    assert any("skipping image 'small'" in r.getMessage() for r in caplog.records)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report
    other = make_image_folder(tmp_path / "other", n=1, seed=3)
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(other / "small.png")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--folder", str(other), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert all("ssim" in ms for sets in results.values() for ms in sets.values())
