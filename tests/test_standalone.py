"""Standalone weights wherever a run is accepted: `kdsr eval FILE`, `kdsr infer FILE`, a config's `weights:`.

An exported file needs nothing from its run; a foreign checkpoint needs --backbone/--scale/--option; every
bad file (other architecture, scale or width, truncated, a pickle that would run code) is one line, exit 2,
and nothing is written.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from kdsr.cli import main
from kdsr.testing import make_image_folder
from tests.conftest import tiny_config, write_config

OPTIONS = {"n_feats": 8, "n_resblocks": 1}
FOREIGN = ["--backbone", "edsr_baseline", "--scale", "2", "--option", "n_feats=8", "--option", "n_resblocks=1"]


def independent_run(tmp: Path) -> Path:
    """A finished one-stage run of a tiny EDSR (two steps), scale 2; HR images in ``tmp/val``."""
    cfg = tiny_config(tmp, steps=2)
    cfg["stages"] = [dict(cfg["stages"][0], name="edsr", student={"backbone": "edsr_baseline", "options": OPTIONS})]
    cfg["profile"] = {"hr_size": [16, 16], "latency": False}
    assert main(["run", str(write_config(tmp / "c.yaml", cfg)), "--quiet"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return independent_run(tmp_path_factory.mktemp("standalone"))


@pytest.fixture(scope="module")
def exported(run) -> Path:
    out = run.parent / "edsr.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


def scores(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def one_line_error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_eval_of_the_export_gives_the_branch_psnr_and_needs_nothing_else(run, exported, tmp_path, capsys):
    val = run.parent / "val"
    (branch,) = [v for k, v in scores(capsys, str(run), "--folder", str(val)).items() if k != "bicubic"]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(exported, alone / "model.safetensors")  # no run, no training data next to it
    before = files_under(alone) | files_under(val)
    (file_scores,) = scores(capsys, str(alone / "model.safetensors"), "--folder", str(val)).values()
    assert file_scores["val"]["psnr"] == pytest.approx(branch["val"]["psnr"], abs=1e-3)
    assert file_scores["val"]["ssim"] == pytest.approx(branch["val"]["ssim"], abs=1e-6)
    assert files_under(alone) | files_under(val) == before  # wrote nothing
    assert "--folder" in one_line_error(capsys, "eval", str(alone / "model.safetensors"))


def test_foreign_checkpoint_needs_and_takes_backbone_scale_options(run, exported, tmp_path, capsys):
    from safetensors.torch import load_file

    pth = tmp_path / "official.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in load_file(str(exported)).items()}, "epoch": 3}, pth)
    err = one_line_error(capsys, "eval", str(pth), "--folder", str(run.parent / "val"))
    assert str(pth) in err and "--backbone" in err
    ref = scores(capsys, str(exported), "--folder", str(run.parent / "val"))["edsr"]
    got = scores(capsys, str(pth), "--folder", str(run.parent / "val"), *FOREIGN)["official"]
    assert got == ref


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--backbone", "carn", "--scale", "2"], ["official.pth", "CARN"]),  # another architecture
        (["--backbone", "edsr_baseline", "--scale", "3", "--option", "n_feats=8", "--option", "n_resblocks=1"], ["official.pth", "scale"]),
        (["--backbone", "edsr_baseline", "--scale", "2", "--option", "n_feats=16", "--option", "n_resblocks=1"], ["official.pth", "n_feats"]),
    ],
)
def test_foreign_file_of_another_network_is_one_line(exported, tmp_path, capsys, flags, words):
    from safetensors.torch import load_file

    pth = tmp_path / "official.pth"
    torch.save(load_file(str(exported)), pth)
    lr = make_image_folder(tmp_path / "lr", n=1, size=(9, 9), seed=3)
    err = one_line_error(capsys, "infer", str(pth), str(lr), "--out", str(tmp_path / "out"), *flags)
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_self_described_file_refuses_contradicting_flags(exported, capsys, tmp_path):
    err = one_line_error(capsys, "eval", str(exported), "--folder", str(tmp_path), "--scale", "3")
    assert str(exported) in err and "x2" in err and "--scale" in err
    err = one_line_error(capsys, "eval", str(exported), "--folder", str(tmp_path), "--backbone", "rcan")
    assert "edsr_baseline" in err and "--backbone" in err


def test_truncated_file_is_one_line(exported, tmp_path, capsys):
    cut = tmp_path / "cut.safetensors"
    data = exported.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    err = one_line_error(capsys, "eval", str(cut), "--folder", str(tmp_path), *FOREIGN)
    assert str(cut) in err
    assert files_under(tmp_path) == {cut}


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": _RunsCode(str(marker))}))
    torch.save({"weights": _RunsCode(str(marker))}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        err = one_line_error(capsys, "eval", str(path), "--folder", str(tmp_path), *FOREIGN)
        assert str(path) in err
    assert not marker.exists()


def test_infer_with_a_file(exported, tmp_path, capsys):
    from PIL import Image

    lr = make_image_folder(tmp_path / "lr", n=2, size=(11, 7), seed=4)
    assert main(["infer", str(exported), str(lr), "--out", str(tmp_path / "out"), "--tile", "4"]) == 0
    assert Image.open(tmp_path / "out" / "img0.png").size == (14, 22)
    assert set(json.loads((tmp_path / "out" / "infer.json").read_text())["images"][0]["branches"]) == {"edsr"}


def test_config_weights_take_an_exported_file_without_backbone(run, exported, tmp_path, capsys):
    cfg = tiny_config(tmp_path, steps=1)
    cfg["stages"] = [
        {
            "name": "kd",
            "steps": 1,
            "teacher": {"weights": str(exported)},
            "student": {"backbone": "edsr_baseline", "options": OPTIONS, "init": {"weights": str(exported)}},
            "losses": [{"name": "output_kd"}],
        }
    ]
    cfg["profile"] = {"hr_size": [16, 16], "latency": False}
    path = write_config(tmp_path / "c.yaml", cfg)
    assert main(["validate", str(path)]) == 0
    from kdsr.config import load_config
    from kdsr.engine.build import build_stage

    stage = build_stage(load_config(path), 0, {})
    own = {k: v for k, v in stage.branches["teacher"].model.state_dict().items()}
    from safetensors.torch import load_file

    assert all(torch.equal(own[k], v) for k, v in load_file(str(exported)).items())
    assert all(torch.equal(stage.branches["student"].model.state_dict()[k], v) for k, v in own.items())
    # a foreign file still needs its backbone; a file for another scale is refused
    torch.save(load_file(str(exported)), tmp_path / "plain.pth")
    cfg["stages"][0]["teacher"] = {"weights": str(tmp_path / "plain.pth")}
    err = one_line_error(capsys, "validate", str(write_config(tmp_path / "c2.yaml", cfg)))
    assert "stages[0].teacher.weights" in err and "backbone" in err
    cfg["stages"][0]["teacher"] = {"weights": str(exported)}
    cfg["scale"] = 3
    err = one_line_error(capsys, "validate", str(write_config(tmp_path / "c3.yaml", cfg)))
    assert "x2" in err and "x3" in err


def test_eval_tiling_takes_effect_without_a_policy(run, capsys):
    """15.15: --tile/--overlap/--batch used to be ignored unless --policy was given."""
    val = str(run.parent / "val")
    whole = scores(capsys, str(run), "--folder", val)["edsr"]["val"]["psnr"]
    seams = scores(capsys, str(run), "--folder", val, "--tile", "4", "--overlap", "0")["edsr"]["val"]["psnr"]
    exact = scores(capsys, str(run), "--folder", val, "--tile", "4", "--overlap", "12", "--batch", "3")["edsr"]["val"]["psnr"]
    assert seams != pytest.approx(whole, abs=1e-6)  # tiles without context change the output: tiling ran
    assert exact == pytest.approx(whole, abs=1e-9)  # with enough context it is exact
