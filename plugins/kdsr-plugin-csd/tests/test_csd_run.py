"""End to end: ``kdsr run`` of a two-stage CSD config (joint widths, then a Pro-CSD chain initialised from it)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from kdsr.cli import main

TINY_EDSR = {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1}}


def config(out: Path) -> dict:
    stage = {"steps": 3, "log_every": 1, "checkpoint_every": 3}
    return {
        "name": "csd_tiny",
        "out_dir": str(out),
        "scale": 2,
        "seed": 0,
        "data": {
            "train": {"name": "samples", "options": {"names": ["astronaut"]}},
            "eval": [{"name": "samples", "label": "chelsea", "options": {"names": ["chelsea"]}}],
            "patch_size": 8,
            "batch_size": 3,
        },
        "stages": [
            {
                "name": "joint",
                "student": {"constructor": "cssr", "options": {**TINY_EDSR, "widths": [1.0, 0.5]}},
                "losses": [{"name": "l1", "student": "w1.0"}, {"name": "l1", "student": "w0.5"}],
                **stage,
            },
            {
                "name": "chain",
                "student": {
                    "constructor": "cssr",
                    "options": {**TINY_EDSR, "widths": [1.0, 0.5, 0.25]},
                    "init": {"from_stage": "joint"},
                },
                "losses": [
                    {"name": "l1", "student": "w1.0"},
                    {"name": "l1", "student": "w0.5"},
                    {"name": "l1", "student": "w0.25"},
                    {"name": "csd", "student": "w0.5", "teacher": "w1.0", "weight": 200, "options": {"num_negatives": 2}},
                    {"name": "csd", "student": "w0.25", "teacher": "w0.5", "weight": 200, "options": {"num_negatives": 2}},
                ],
                **stage,
            },
        ],
        "profile": {"hr_size": [32, 32], "latency": False},
    }


@pytest.mark.slow  # ~27 s on 2 shared cores
def test_two_stage_csd_run_reports_every_width(tmp_path):
    path = tmp_path / "csd.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path / "run")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-VGG warning is expected here
        assert main(["run", str(path)]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = report["models"]
    assert [r for r in rows if r != "bicubic"] == ["joint.w1.0", "joint.w0.5", "chain.w1.0", "chain.w0.5", "chain.w0.25"]
    params = [rows[f"chain.{b}"]["params"] for b in ("w1.0", "w0.5", "w0.25")]
    macs = [rows[f"chain.{b}"]["macs"] for b in ("w1.0", "w0.5", "w0.25")]
    assert params[0] > params[1] > params[2] and macs[0] > macs[1] > macs[2]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    chain = [r for r in records if r["kind"] == "train" and r["stage"] == "chain"]
    assert len(chain) == 3 and {"csd[w1.0->w0.5]", "csd[w0.5->w0.25]"} <= set(chain[-1])
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "chain" / "final.safetensors"))
    assert weights and all(k.startswith("w1.0.") for k in weights)  # the shared network only: no VGG, no loss state
