"""End to end through the CLI: each loss trains 3 steps; the adaptor is trained and checkpointed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from facd_testing import make_images, run_kdsr

pytestmark = pytest.mark.slow

TINY_TAPS = ["body.0", "body.1", "body"]
LOSSES = {
    "fd": [{"name": "output_kd"}, {"name": "fd", "weight": 0.004, "options": {"student_taps": TINY_TAPS}}],
    "fakd": [{"name": "fakd", "options": {"student_taps": ["body.0", "body.1", "upsampler.in"]}}],
    "facd": [{"name": "output_kd"}, {"name": "facd", "options": {"student_taps": TINY_TAPS, "adaptive": "always"}}],
}


def tiny_run(tmp_path: Path, stages: list[str], steps: int) -> dict:
    """Random-init EDSR-baseline teacher 8 ch -> student 4 ch, x2, one stage per loss."""
    train, val = make_images(tmp_path / "train", 3, seed=1), make_images(tmp_path / "val", 1, seed=2)
    return {
        "name": "facd_tiny",
        "out_dir": str(tmp_path / "run"),
        "scale": 2,
        "seed": 0,
        "device": "cpu",
        "data": {
            "train": {"name": "folder", "options": {"root": str(train)}},
            "eval": [{"name": "folder", "options": {"root": str(val)}}],
            "patch_size": 8,
            "batch_size": 4,
        },
        "stages": [
            {
                "name": name,
                "steps": steps,
                "teacher": {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 2}},
                "student": {"backbone": "edsr_baseline", "options": {"n_feats": 4, "n_resblocks": 2}},
                "losses": LOSSES[name],
                "log_every": 1,
                "checkpoint_every": 1,
            }
            for name in stages
        ],
        "eval": {"metrics": ["psnr"], "bicubic": False},
        "profile": {"hr_size": [16, 16], "latency": False},
    }


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def loss_weights(run: Path, stage: str, step: int) -> dict:
    weights = load_file(run / "checkpoints" / stage / f"step-{step}.safetensors")
    return {k: v for k, v in weights.items() if k.startswith("loss")}


def test_each_loss_trains_three_steps_through_the_cli(tmp_path: Path) -> None:
    cfg = write(tmp_path, tiny_run(tmp_path, list(LOSSES), steps=3))
    result = run_kdsr("run", str(cfg), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for stage in LOSSES:
        train = [r for r in records if r["kind"] == "train" and r["stage"] == stage]
        assert [r["step"] for r in train] == [1, 2, 3]
        for r in train:
            assert stage in r and math.isfinite(r[stage]) and r[stage] > 0
    # the trainable parts of the losses are checkpointed with the student, sized from the features
    assert loss_weights(run, "fd", 3)["loss1.adaptors.0.weight"].shape == (8, 4, 1, 1)
    assert loss_weights(run, "facd", 3)["loss1.dr.2.weight"].shape == (8, 4, 1, 1)
    assert loss_weights(run, "fakd", 3) == {}


def test_fd_adaptor_joins_the_optimiser(tmp_path: Path) -> None:
    """The same seeded run for 2 and for 3 steps: the adaptor's weights differ by one Adam step (|change|
    <= ~lr 1e-4, far below the ~0.1 spread of its initialisation): it is trained and its init is reproducible."""
    weights = {}
    for steps in (2, 3):
        folder = tmp_path / f"steps{steps}"
        folder.mkdir()
        cfg = write(folder, tiny_run(folder, ["fd"], steps=steps))
        result = run_kdsr("run", str(cfg), "--quiet")
        assert result.returncode == 0, result.stderr[-3000:]
        weights[steps] = loss_weights(folder / "run", "fd", steps)
    assert set(weights[2]) == set(weights[3]) == {f"loss1.adaptors.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    for key in weights[2]:
        change = float((weights[3][key] - weights[2][key]).abs().max())
        assert 0 < change <= 2e-4, (key, change)
