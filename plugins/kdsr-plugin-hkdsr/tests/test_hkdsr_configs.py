"""Every recipe in configs/hkdsr resolves: plugins, options, stage references and weight shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from hkdsr_testing import backbone, make_images
from kdsr.config import parse_config
from kdsr.engine.build import check_config
from kdsr.weights import save_weights

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs" / "hkdsr").glob("*.yaml"))


def test_there_are_paper_style_and_cpu_recipes() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"rcan_x2", "rcan_x3", "rcan_x4", "rcan_x4_cpu", "edsr_x2_cpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves(path: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    images = str(make_images(tmp_path / "img", 1, size=(16, 16)))
    for spec in [data["data"]["train"], *data["data"]["eval"]]:
        spec["options"]["root"] = images
    for stage in data["stages"]:
        teacher = stage.get("teacher") or {}
        if "weights" in teacher:  # placeholder for the official checkpoint: zeros of the right shapes
            with torch.device("meta"):
                net = backbone(teacher["backbone"], data["scale"], **teacher.get("options", {}))
            save_weights({k: torch.zeros(v.shape) for k, v in net.state_dict().items()}, tmp_path / "t.safetensors")
            teacher["weights"] = str(tmp_path / "t.safetensors")
    check_config(parse_config(data, str(path)))
