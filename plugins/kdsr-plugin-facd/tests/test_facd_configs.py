"""configs/facd: every loss option validates and every tap exists on the networks the config builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import kdsr
from facd_testing import REPO, run_kdsr
from kdsr.plugins import registry

CONFIGS = sorted((REPO / "configs" / "facd").glob("*.yaml"))
CPU_CONFIGS = [c for c in CONFIGS if c.name.startswith("cpu_")]
DATA = REPO.parent / "shared" / "data" / "sr"


def network(spec: dict, scale: int) -> torch.nn.Module:
    with torch.device("meta"):
        return registry("backbone").create(spec["backbone"], spec.get("options", {}), scale=scale)


def test_there_are_paper_style_and_cpu_configs() -> None:
    names = {c.stem for c in CONFIGS}
    for arch in ("edsr", "rcan"):
        for method in ("fd", "fakd", "facd"):
            assert {f"{arch}_x{s}_{method}" for s in (2, 3, 4)} <= names
    assert {f"cpu_x2_{m}" for m in ("scratch", "output_kd", "fd", "fakd", "facd")} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_losses_and_taps_resolve(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    students: dict[str, dict] = {}
    for stage in cfg["stages"]:
        students[stage["name"]] = stage["student"]
        teacher_spec = stage.get("teacher")
        if teacher_spec is not None and "from_stage" in teacher_spec:
            teacher_spec = students[teacher_spec["from_stage"]]
        student = network(stage["student"], cfg["scale"])
        teacher = network(teacher_spec, cfg["scale"]) if teacher_spec else None
        for spec in stage.get("losses", [{"name": "l1"}]):
            loss = registry("loss").create(spec["name"], spec.get("options", {}))
            for tap in loss.needs.student_taps:
                kdsr.resolve_tap(student, tap)
            for tap in loss.needs.teacher_taps:
                kdsr.resolve_tap(teacher, tap)


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "T91").is_dir(), reason="needs ../shared/data/sr (T91, Set5)")
@pytest.mark.parametrize("path", CPU_CONFIGS, ids=lambda p: p.stem)
def test_cpu_config_validates(path: Path) -> None:
    result = run_kdsr("validate", str(path.relative_to(REPO)), cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
