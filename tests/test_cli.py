"""The CLI as a user drives it: a tiny run end to end, then eval, profile, plugins, convert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from kdsr.cli import main
from tests.conftest import tiny_config, write_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    cfg = write_config(tmp / "c.yaml", tiny_config(tmp, steps=4))
    assert main(["run", str(cfg), "--quiet"]) == 0
    return tmp / "run"


def test_run_outputs(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.resolved.yaml", "metrics.jsonl", "report.json", "report.md", "psnr_vs_macs.png",
            "training_curves.png", "checkpoints", "tensorboard", "progress.json"} <= names
    resolved = yaml.safe_load((finished_run / "config.resolved.yaml").read_text())
    assert resolved["plugins"]["zoo"] and resolved["stages"][0]["optimizer"]["name"] == "adam"
    report = json.loads((finished_run / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student", "bicubic"}
    teacher, student = report["models"]["teacher"], report["models"]["student"]
    assert teacher["params"] > student["params"] > 0 and teacher["macs"] > student["macs"] > 0
    assert "aten::pixel_shuffle" in teacher["skipped_ops"]  # stated, not silently dropped
    for row in report["models"].values():
        assert set(row["quality"]) == {"val"} and set(row["quality"]["val"]) == {"psnr", "ssim"}
    assert "| bicubic |" in (finished_run / "report.md").read_text()
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train" and r["stage"] == "student"] == [2, 4]
    assert (finished_run / "checkpoints" / "student" / "final.safetensors").exists()


def test_eval_reproduces_the_report(finished_run, capsys):
    assert main(["eval", str(finished_run), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    report = json.loads((finished_run / "report.json").read_text())
    for model in ("teacher", "student", "bicubic"):
        assert results[model]["val"]["psnr"] == pytest.approx(report["models"][model]["quality"]["val"]["psnr"], abs=1e-9)


def test_profile_backbone_json(capsys):
    assert main(["profile", "--backbone", "edsr_baseline", "--scale", "2", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["params"] == 1_369_859 and abs(row["macs"] / 1e9 - 316) / 316 < 0.01


def test_profile_config(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path))
    assert main(["profile", "--config", str(cfg), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["teacher", "student"]


def test_plugins_show_backbone(capsys):
    assert main(["plugins", "show", "edsr_baseline", "--json"]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["kind"] == "backbone" and info["plugin"] == "zoo"
    assert {"head", "body.0", "body", "upsampler.in"} <= set(info["taps"])
    assert {o["name"] for o in info["options"]} >= {"n_feats", "n_resblocks", "res_scale"}


def test_convert_official_checkpoint(tmp_path, capsys):
    from kdsr_zoo.edsr import edsr_baseline

    src = tmp_path / "EDSR_x2.pt"
    torch.save(edsr_baseline(2, n_feats=8, n_resblocks=2).state_dict(), src)
    out = tmp_path / "edsr.safetensors"
    argv = ["convert", str(src), str(out), "--backbone", "edsr_baseline", "--scale", "2", "--option", "n_feats=8", "--option", "n_resblocks=2"]
    assert main(argv) == 0 and out.exists()
    assert main(argv[:-4] + ["--option", "n_feats=8", "--option", "n_resblocks=3"]) == 2
    assert "missing" in capsys.readouterr().err


def test_resume_refuses_to_extend_a_finished_stage(finished_run, capsys):
    cfg = finished_run.parent / "c.yaml"
    assert main(["run", str(cfg), "--resume", "--quiet", "stages.0.steps=9"]) == 2
    assert "already finished at 4 steps" in capsys.readouterr().err


@pytest.mark.parametrize("score_teacher", [True, False])
def test_teacher_from_a_runs_final_weights(finished_run, tmp_path, capsys, score_teacher):
    """A run's final weights file is a teacher for another run; ``eval.teachers: false`` skips scoring it again."""
    cfg = tiny_config(tmp_path, steps=2, eval={"teachers": score_teacher})
    weights = finished_run / "checkpoints" / "teacher" / "final.safetensors"
    cfg["stages"] = [{**cfg["stages"][1], "teacher": {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1}, "weights": str(weights)}}]
    assert main(["run", str(write_config(tmp_path / "c.yaml", cfg)), "--quiet"]) == 0
    models = json.loads((tmp_path / "run" / "report.json").read_text())["models"]
    teacher = json.loads((finished_run / "report.json").read_text())["models"]["teacher"]
    if score_teacher:
        assert models["student.teacher"]["quality"]["val"]["psnr"] == pytest.approx(teacher["quality"]["val"]["psnr"], abs=1e-9)
    else:
        assert models["student.teacher"]["quality"] == {} and models["student"]["quality"]["val"]["psnr"] > 0
        assert "| student.teacher |" in (tmp_path / "run" / "report.md").read_text()
