"""`kdsr run` end to end: head pre-training on a loaded teacher, then HKDSR distillation (3 steps each)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from hkdsr_testing import TINY_RCAN, backbone, make_images, run_kdsr
from kdsr.weights import read_state_dict, save_weights


def _config(tmp_path: Path, teacher_weights: Path) -> dict:
    student_rcan = {**TINY_RCAN, "n_feats": 8}
    return {
        "name": "hkdsr-tiny",
        "out_dir": str(tmp_path / "run"),
        "scale": 2,
        "device": "cpu",
        "threads": 1,
        "data": {
            "train": {"name": "folder", "options": {"root": str(make_images(tmp_path / "train", 3, seed=1))}},
            "eval": [{"name": "folder", "options": {"root": str(make_images(tmp_path / "val", 1, size=(24, 20), seed=2))}}],
            "patch_size": 10,
            "batch_size": 2,
        },
        "stages": [
            {
                "name": "heads",
                "steps": 3,
                "teacher": {"backbone": "rcan", "options": TINY_RCAN, "weights": str(teacher_weights)},
                "student": {"constructor": "hkdsr", "options": {"freeze_backbone": True}},
                "losses": [{"name": "hkdsr_heads_l1"}],
                "log_every": 1,
            },
            {
                "name": "distill",
                "steps": 3,
                "teacher": {"from_stage": "heads"},
                "student": {"constructor": "hkdsr", "options": {"backbone": "rcan", "options": student_rcan}},
                "losses": [{"name": "hkdsr"}],
                "log_every": 1,
            },
        ],
        "eval": {"metrics": ["psnr"]},
        "profile": {"hr_size": [16, 16], "latency": False},
    }


def test_two_stage_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = backbone("rcan", 2, **TINY_RCAN)
    save_weights(teacher.state_dict(), tmp_path / "teacher.safetensors")
    cfg_path = tmp_path / "hkdsr.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(tmp_path, tmp_path / "teacher.safetensors"), sort_keys=False))
    assert run_kdsr("validate", str(cfg_path)).returncode == 0
    done = run_kdsr("run", str(cfg_path))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for stage in ("heads", "distill"):
        losses = [r["loss"] for r in records if r["kind"] == "train" and r["stage"] == stage]
        assert len(losses) == 3 and all(v == v and v > 0 for v in losses), (stage, losses)

    heads = read_state_dict(run / "checkpoints" / "heads" / "final.safetensors")
    for k, v in teacher.state_dict().items():  # the frozen teacher copy left head pre-training unchanged
        torch.testing.assert_close(heads[f"student.backbone.{k}"], v)
    assert any(k.startswith("student.heads.") for k in heads)

    latest = json.loads((run / "checkpoints" / "distill" / "latest.json").read_text())
    ckpt = read_state_dict(run / "checkpoints" / "distill" / latest["weights"])
    gates = [k for k in ckpt if k.startswith("loss0.acf.")]
    assert len(gates) == 36  # the ACF gates are trained and checkpointed with the student
