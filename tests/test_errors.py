"""Every user error exits with code 2 and one line naming the thing and the fix; nothing written is lost."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from kdsr.cli import main
from tests.conftest import run_kdsr, tiny_config, write_config


def one_stage(tmp_path: Path, **stage) -> dict:
    cfg = tiny_config(tmp_path, steps=2)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update(stage)
    return cfg


def fails(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("kdsr: error: ") and "\n" not in err and "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def cfg_file(tmp_path: Path, cfg: dict) -> str:
    return str(write_config(tmp_path / "c.yaml", cfg))


def test_misspelt_key(tmp_path, capsys):
    cfg = one_stage(tmp_path)
    cfg["data"]["bach_size"] = 4
    fails(capsys, ["validate", cfg_file(tmp_path, cfg)], "unknown key 'data.bach_size'", "did you mean 'batch_size'")


def test_wrong_type(tmp_path, capsys):
    fails(capsys, ["validate", cfg_file(tmp_path, one_stage(tmp_path, steps="many"))], "'stages.0.steps'", "'many'")


def test_unknown_backbone_and_option(tmp_path, capsys):
    cfg = one_stage(tmp_path, student={"backbone": "edsr_basline"})
    fails(capsys, ["validate", cfg_file(tmp_path, cfg)], "unknown backbone 'edsr_basline'", "did you mean 'edsr_baseline'")
    cfg = one_stage(tmp_path, student={"backbone": "edsr_baseline", "options": {"n_feat": 8}})
    fails(capsys, ["validate", cfg_file(tmp_path, cfg)], "unknown option 'n_feat'", "did you mean 'n_feats'")


def test_unknown_loss(tmp_path, capsys):
    cfg = one_stage(tmp_path, losses=[{"name": "outputkd"}])
    fails(capsys, ["validate", cfg_file(tmp_path, cfg)], "stages[0].losses[0]", "unknown loss 'outputkd'", "output_kd")


def test_loss_needing_a_teacher(tmp_path, capsys):
    cfg = one_stage(tmp_path, losses=[{"name": "output_kd"}])
    fails(capsys, ["validate", cfg_file(tmp_path, cfg)], "needs a teacher branch")


def test_missing_files(tmp_path, capsys):
    fails(capsys, ["run", str(tmp_path / "nope.yaml")], "config file", "does not exist")
    cfg = one_stage(tmp_path)
    cfg["data"]["train"]["options"]["root"] = str(tmp_path / "no_such_folder")
    fails(capsys, ["validate", cfg_file(tmp_path, cfg)], "no_such_folder")
    cfg = one_stage(tmp_path)
    cfg["stages"][0]["teacher"] = {"backbone": "edsr_baseline", "weights": str(tmp_path / "missing.pt")}
    fails(capsys, ["validate", cfg_file(tmp_path, cfg)], "missing.pt", "does not exist")


def test_truncated_image(tmp_path, capsys):
    cfg = one_stage(tmp_path)
    img = Path(cfg["data"]["train"]["options"]["root"]) / "img0.png"
    img.write_bytes(img.read_bytes()[:200])
    fails(capsys, ["run", cfg_file(tmp_path, cfg), "--quiet"], "img0.png")


def test_python_tag_yaml(tmp_path, capsys):
    bad = tmp_path / "tag.yaml"
    bad.write_text("scale: !!python/object/apply:os.system ['true']\nstages: []\n")
    fails(capsys, ["validate", str(bad)], "YAML tag")


def teacher_cfg(tmp_path: Path, weights: Path, **opts) -> str:
    cfg = one_stage(tmp_path, losses=[{"name": "output_kd"}])
    cfg["stages"][0]["teacher"] = {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1, **opts}, "weights": str(weights)}
    return cfg_file(tmp_path, cfg)


def test_checkpoint_for_another_scale_or_architecture(tmp_path, capsys):
    from kdsr_zoo.edsr import edsr_baseline

    x4 = tmp_path / "x4.pt"
    torch.save(edsr_baseline(scale=4, n_feats=8, n_resblocks=1).state_dict(), x4)
    fails(capsys, ["run", teacher_cfg(tmp_path, x4), "--quiet"], "x4.pt", "scale")
    wide = tmp_path / "wide.pt"
    torch.save(edsr_baseline(scale=2, n_feats=16, n_resblocks=1).state_dict(), wide)
    fails(capsys, ["run", teacher_cfg(tmp_path, wide), "--quiet"], "wide.pt", "shape mismatch")


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickle_with_code_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    err = fails(capsys, ["run", teacher_cfg(tmp_path, evil), "--quiet"], "evil.pt", "kdsr refuses")
    assert "code ran" not in capsys.readouterr().out


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, capsys):
    cfg = one_stage(tmp_path, steps=20, checkpoint_every=1, optimizer={"lr": 1e12})
    fails(capsys, ["run", cfg_file(tmp_path, cfg), "--quiet"], "non-finite loss", "last checkpoint")
    latest = tmp_path / "run" / "checkpoints" / "teacher" / "latest.json"
    assert latest.exists()


def test_existing_run_dir_not_touched(tmp_path, capsys):
    cfg = one_stage(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    fails(capsys, ["run", cfg_file(tmp_path, cfg), "--quiet"], "already holds files", "out_dir")
    assert (run_dir / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in run_dir.iterdir()) == ["precious.txt"]


def test_debug_shows_traceback(tmp_path):
    out = run_kdsr("validate", str(tmp_path / "nope.yaml"), "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr
    out = run_kdsr("validate", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
