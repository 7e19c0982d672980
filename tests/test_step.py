"""The distillation step: what runs, what is tapped, what gets gradients."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import kdsr
from kdsr.config import parse_config
from kdsr.engine.build import build_stage
from kdsr.engine.context import RunContext
from kdsr.engine.schedule import lr_factor
from kdsr.engine.trainer import StageTrainer
from kdsr.config import SchedulerConfig
from tests.conftest import tiny_config


class Counter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, *a):
        self.calls += 1


def trainer_for(tmp_path: Path, stage_index: int, losses=None, **stage) -> StageTrainer:
    data = tiny_config(tmp_path, steps=2)
    if losses is not None:
        data["stages"][stage_index]["losses"] = losses
    data["stages"][stage_index].update(stage)
    if stage_index == 1:  # a teacher from weights instead of an earlier stage
        data["stages"][1]["teacher"] = {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1}}
    config = parse_config(data)
    st = build_stage(config, stage_index, {})
    ctx = RunContext(config, tmp_path / "run", torch.device("cpu"))
    return StageTrainer(ctx, st, patches=None, hook=None, logger=None, evaluate=None)


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 12, 12, generator=g), torch.rand(2, 3, 24, 24, generator=g)


def test_teacher_runs_only_when_a_loss_reads_it(tmp_path):
    tr = trainer_for(tmp_path, 1, losses=[{"name": "l1"}])
    assert list(tr.plan) == ["student"]
    tr = trainer_for(tmp_path, 1, losses=[{"name": "output_kd"}])
    assert list(tr.plan) == ["teacher", "student"]  # frozen branches first


def test_teacher_frozen_no_autograd_and_taps_removed(tmp_path):
    class TapLoss(kdsr.Loss):
        needs = kdsr.Needs(teacher=True, student_taps=("body", "head"), teacher_taps=("body",))

        def forward(self, s, t, b):
            assert not t.sr.requires_grad and not t.taps["body"].requires_grad
            assert s.taps["body"].requires_grad and set(s.taps) == {"body", "head"}
            return (s.taps["body"].mean() - t.taps["body"].mean()) ** 2 + (s.sr - b.hr).abs().mean()

    tr = trainer_for(tmp_path, 1, losses=[{"name": "l1"}])
    tr.stage.terms[0].loss, tr.stage.terms[0].teacher = TapLoss(), "teacher"
    tr.plan = tr._plan()
    teacher = tr.stage.branches["teacher"].model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    lr, hr = batch()
    values = tr.train_step(lr, hr, 0)
    assert values["loss"] > 0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    for branch in tr.stage.branches.values():  # hooks are gone after the step
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in branch.model.modules())


def test_step_updates_student_and_reports_terms(tmp_path):
    tr = trainer_for(tmp_path, 1, losses=[{"name": "l1", "weight": 2.0}, {"name": "output_kd", "label": "kd"}])
    student = tr.stage.branches["student"].model
    w0 = [p.clone() for p in student.parameters()]
    values = tr.train_step(*batch(), 0)
    assert set(values) == {"l1", "kd", "loss"}
    assert values["loss"] == pytest.approx(values["l1"] + values["kd"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(w0, student.parameters()))


def test_bf16_channels_last_ema_step(tmp_path):
    tr = trainer_for(tmp_path, 0, precision="bf16", channels_last=True, ema=0.5)
    values = tr.train_step(*batch(), 0)
    assert torch.isfinite(torch.tensor(values["loss"]))
    ema = tr.eval_branches()["student"].model
    assert ema is not tr.stage.branches["student"].model


def test_lr_schedules():
    cos = lr_factor(SchedulerConfig(name="cosine", warmup_steps=10), total_steps=110, base_lr=1.0)
    assert cos(0) == pytest.approx(0.1) and cos(10) == pytest.approx(1.0) and cos(110) == pytest.approx(0.0)
    step = lr_factor(SchedulerConfig(name="step", step_size=5, gamma=0.1), 100, 1.0)
    assert step(4) == 1.0 and step(5) == pytest.approx(0.1)
    ms = lr_factor(SchedulerConfig(name="multistep", milestones=[3, 6], gamma=0.5), 100, 1.0)
    assert [ms(s) for s in (2, 3, 6)] == [1.0, 0.5, 0.25]


def test_contributing_example_loss_works():
    """The loss plugin in CONTRIBUTING.md runs as printed."""
    text = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text()
    code = re.search(r"```python\n# kdsr_attention/__init__.py\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "CONTRIBUTING.md", "exec"), ns)
    from kdsr.plugins import Plugins

    plugins = Plugins()
    import types

    module = types.ModuleType("kdsr_attention")
    module.__dict__.update(ns)
    assert plugins.add(module, "attention").ok
    loss = plugins.registry("loss").create("attention_transfer", {"taps": ["head", "body"]})
    from kdsr_zoo.edsr import edsr_baseline

    s_net, t_net = edsr_baseline(2, n_feats=4, n_resblocks=1), edsr_baseline(2, n_feats=8, n_resblocks=1)
    lr, hr = batch()
    with kdsr.capture(s_net, loss.needs.student_taps) as st, kdsr.capture(t_net, loss.needs.teacher_taps) as tt:
        s_sr, t_sr = s_net(lr), t_net(lr)
    value = loss(kdsr.Outputs(s_sr, st), kdsr.Outputs(t_sr, tt), kdsr.Batch(lr, hr))
    value.backward()
    assert value > 0 and any(p.grad is not None for p in s_net.parameters())


def test_lazy_loss_parameters_are_materialised_and_trained(tmp_path):
    class Adapted(kdsr.Loss):
        needs = kdsr.Needs(teacher=True, student_taps=("body",), teacher_taps=("body",))

        def __init__(self):
            super().__init__()
            self.adaptor = torch.nn.LazyConv2d(8, 1)

        def forward(self, s, t, b):
            return (self.adaptor(s.taps["body"]) - t.taps["body"]).abs().mean()

    class Patches:
        def batch(self, step):
            return batch()

    data = tiny_config(tmp_path, steps=2)
    data["stages"][1]["teacher"] = {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1}}
    config = parse_config(data)
    st = build_stage(config, 1, {})
    st.terms[0].loss = Adapted()
    tr = StageTrainer(RunContext(config, tmp_path / "run", torch.device("cpu")), st, Patches(), None, None, None)
    adaptor = st.terms[0].loss.adaptor
    assert adaptor.weight.shape == (8, 4, 1, 1)  # student body has 4 channels, teacher 8
    assert any(p is adaptor.weight for p in tr.params)
    w0 = adaptor.weight.clone()
    tr.train_step(*batch(), 0)
    assert not torch.equal(w0, adaptor.weight)


def test_student_init_does_not_depend_on_the_teacher(tmp_path):
    """Scratch and KD students of one seed start from the same weights: building a teacher draws no random numbers."""
    cfg = tiny_config(tmp_path)
    student = {"backbone": "edsr_baseline", "options": {"n_feats": 8, "n_resblocks": 1}}
    teacher = {"backbone": "edsr_baseline", "options": {"n_feats": 16, "n_resblocks": 2}}
    stages = [{"name": "s", "steps": 1, "student": student}, {"name": "s", "steps": 1, "student": student, "teacher": teacher, "losses": [{"name": "output_kd"}]}]
    weights = []
    for stage in stages:
        config = parse_config({**cfg, "stages": [stage]})
        torch.manual_seed(0)
        weights.append(build_stage(config, 0, {}).branches["student"].model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(weights[0].values(), weights[1].values()))
