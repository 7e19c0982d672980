"""The HKDSR student as its plain backbone: ``to_plain`` drops the heads; its run file loads as that backbone."""

from __future__ import annotations

import pytest
import torch

import kdsr
from hkdsr_testing import TINY_EDSR, backbone
from kdsr.config import ModelSpec
from kdsr.engine.build import build_backbone
from kdsr.engine.checkpoint import collect
from kdsr.plugins import registry
from kdsr.weights import save_weights
from kdsr_hkdsr.model import hkdsr_backbone, hkdsr_student


def trained_student() -> torch.nn.Module:
    torch.manual_seed(0)
    net = hkdsr_student(None, 2, backbone="edsr", options=TINY_EDSR)["student"].model
    for p in net.parameters():
        p.data += 0.01 * torch.randn_like(p)
    return net.eval()


def test_student_exports_as_plain_edsr_without_heads():
    student = trained_student()
    plain = student.to_plain()
    assert (plain.backbone, plain.options, plain.scale) == ("edsr", TINY_EDSR, 2)
    assert set(plain.state_dict) == set(student.backbone.state_dict())  # no heads.*
    net = registry("backbone").create(plain.backbone, plain.options, scale=plain.scale)
    net.load_state_dict(plain.state_dict, strict=True)
    x = torch.rand(1, 3, 7, 5)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), student(x))
    assert hkdsr_backbone(2, "edsr", TINY_EDSR).to_plain().options == TINY_EDSR


def test_student_final_weights_load_as_plain_edsr(tmp_path):
    student = trained_student()
    path = tmp_path / "final.safetensors"
    save_weights(collect({"student": student}), path)  # student.backbone.* and student.heads.*
    net = build_backbone(ModelSpec(backbone="edsr", options=TINY_EDSR, weights=path), 2, "stages[1].teacher")
    x = torch.rand(1, 3, 7, 5)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), student(x))


def test_copy_of_a_teacher_cannot_name_its_backbone():
    teacher = backbone("edsr", 2, **TINY_EDSR)
    student = hkdsr_student(teacher, 2)["student"].model
    with pytest.raises(kdsr.KdsrError, match="copy of the stage's teacher"):
        student.to_plain()
