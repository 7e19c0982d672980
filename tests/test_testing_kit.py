"""kdsr.testing: builtins pass the contract checks, and each check fails on a plugin that breaks its rule."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdsr
from kdsr.builtin import losses, policies, students
from kdsr.inference import Policy
from kdsr.plugins import Plugins
from kdsr.testing import (
    TinySR,
    check_backbone,
    check_loss,
    check_plugin,
    check_policy,
    check_student_constructor,
    make_image_folder,
    outputs_of,
    tiny_batch,
    tiny_pair,
)


# ---------------------------------------------------------------- builtins keep the contract


@pytest.mark.parametrize(
    ("factory", "options"),
    [(losses.l1, None), (losses.charbonnier, {"eps": 1e-2}), (losses.output_kd, {"alpha": 0.3})],
)
def test_builtin_losses_keep_the_contract(factory, options) -> None:
    values = check_loss(factory, options)
    assert set(values) == {"8x8", "8x8 bf16", "11x13", "11x13 bf16"}
    assert all(v > 0 for v in values.values())


def test_builtin_policies_and_student_keep_the_contract() -> None:
    assert set(check_policy(policies.full).values()) == {"full"}
    assert set(check_policy(policies.fixed, {"width": 0.25}).values()) == {"quarter"}
    branches = check_student_constructor(students.independent, {"backbone": "edsr_baseline", "options": {"n_feats": 4, "n_resblocks": 1}})
    assert list(branches) == ["student"]


def tiny_sr(scale: int, n_feats: int = 4) -> nn.Module:
    """The kit's own tiny network as a backbone factory."""
    return TinySR(scale, n_feats)


def test_tiny_sr_keeps_the_backbone_contract_and_the_plugin_check() -> None:
    check_backbone(tiny_sr, scales=(2, 3), options={"n_feats": 6}, load_official=lambda model, state: state)

    class Plugin:
        @kdsr.hookimpl
        def register_backbones(self, register):
            register("tiny_sr", tiny_sr)

    assert check_plugin(Plugin(), {"backbone": ["tiny_sr"]}) == {"backbone": ["tiny_sr"]}
    with pytest.raises(AssertionError, match="expected"):
        check_plugin(Plugin(), {"backbone": ["other"]})


def test_helpers(tmp_path) -> None:
    teacher, student = tiny_pair(scale=3)
    batch = tiny_batch(scale=3, size=(5, 7), bicubic=True)
    assert batch.lr.shape == (2, 3, 5, 7) and batch.hr.shape == batch.bicubic.shape == (2, 3, 15, 21)
    t = outputs_of(teacher, batch.lr, ["body"], bf16=True)
    s = outputs_of(student, batch.lr, ["body"])
    assert not t.sr.requires_grad and s.sr.requires_grad  # frozen teacher runs without autograd
    assert t.sr.dtype == t.taps["body"].dtype == torch.float32
    assert t.taps["body"].shape[1] == 8 and s.taps["body"].shape[1] == 4
    folder = make_image_folder(tmp_path / "hr", n=3, size=(20, 24))
    plugins = Plugins()
    plugins.load_builtins()
    samples = plugins.registry("dataset").create("folder", {"root": str(folder)})
    assert len(samples) == 3


# ---------------------------------------------------------------- each check can fail


class Detached(kdsr.Loss):
    def forward(self, student, teacher, batch):
        return F.l1_loss(student.sr.detach(), batch.hr)


class FixedSize(kdsr.Loss):
    def forward(self, student, teacher, batch):
        return (student.sr.view(2, 3, 16, 16) - batch.hr.view(2, 3, 16, 16)).abs().mean()


class Counter(kdsr.Loss):
    calls = 0

    def forward(self, student, teacher, batch):
        Counter.calls += 1
        return F.l1_loss(student.sr, batch.hr) * Counter.calls


class LogZero(kdsr.Loss):
    def forward(self, student, teacher, batch):
        return torch.log((student.sr - student.sr).abs().mean())


class TapsOnly(kdsr.Loss):
    needs = kdsr.Needs(student_taps=("body",))

    def forward(self, student, teacher, batch):
        return student.taps["body"].detach().mean() * 0 + student.sr.new_ones(()).requires_grad_()


def documented(loss_cls: type) -> Callable[[], kdsr.Loss]:
    def factory() -> kdsr.Loss:
        """A loss under test."""
        return loss_cls()

    return factory


def undocumented() -> kdsr.Loss:
    return losses.L1()


def unpicklable(scale: float = 1.0, fn: Callable[[float], float] = lambda v: v) -> kdsr.Loss:
    """An option default that cannot pickle."""
    return losses.L1()


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (documented(Detached), "not differentiable"),
        (documented(FixedSize), "11x13: the loss raised RuntimeError"),
        (documented(Counter), "not deterministic"),
        (documented(LogZero), "loss is -inf"),
        (documented(TapsOnly), "no gradient reaches the student"),
        (undocumented, "summary"),
        (unpicklable, "must pickle"),
        (documented(nn.L1Loss), "not a kdsr.Loss"),
    ],
)
def test_check_loss_fails_on_a_broken_loss(loss, message) -> None:
    with pytest.raises(AssertionError, match=message):
        check_loss(loss)


def test_check_loss_on_an_instance_and_options_only_for_factories() -> None:
    assert check_loss(losses.OutputKD(0.5), sizes=((6, 6),))
    with pytest.raises(AssertionError, match="options apply to a factory"):
        check_loss(losses.L1(), {"eps": 1.0})


class Cropped(TinySR):
    def forward(self, lr):
        return super().forward(lr)[..., 1:, :]


class Noisy(TinySR):
    def forward(self, lr):
        return super().forward(lr) + 1e-3 * torch.rand(1)


class NoBody(TinySR):
    def feature_taps(self):
        return {k: v for k, v in super().feature_taps().items() if k != "body"}


class UpsampledTap(TinySR):
    def feature_taps(self):
        return {**super().feature_taps(), "head": kdsr.Tap(self.upsampler)}


def as_backbone(cls: type) -> Callable[..., nn.Module]:
    def factory(scale: int, n_feats: int = 4) -> nn.Module:
        """A backbone under test."""
        return cls(scale, n_feats)

    return factory


@pytest.mark.parametrize(
    ("cls", "message"),
    [(Cropped, "gave SR"), (Noisy, "not deterministic"), (NoBody, "lacks the taps \\['body'\\]"), (UpsampledTap, "tap head")],
)
def test_check_backbone_fails_on_a_broken_backbone(cls, message) -> None:
    with pytest.raises(AssertionError, match=message):
        check_backbone(as_backbone(cls), scales=(2,), bf16=False)


def test_check_backbone_needs_defaults_and_a_faithful_loader() -> None:
    def no_default(scale: int, n_feats: int) -> nn.Module:
        """Width must be given."""
        return TinySR(scale, n_feats)

    with pytest.raises(AssertionError, match="every option needs a default"):
        check_backbone(no_default, scales=(2,), options={"n_feats": 4})

    class Tied(TinySR):
        def __init__(self, scale: int, n_feats: int) -> None:
            super().__init__(scale, n_feats)
            self.body[1][0].weight = self.body[0][0].weight

    with pytest.raises(AssertionError, match="do not survive a save/load round trip"):
        check_backbone(as_backbone(Tied), scales=(2,), bf16=False, load_official=lambda model, state: state)


class Nowhere(Policy):
    def select(self, lr, choices):
        return "nowhere"


def test_check_policy_fails_on_an_unknown_branch() -> None:
    with pytest.raises(AssertionError, match="not one of"):
        check_policy(Nowhere())


def test_check_student_constructor_fails_on_broken_constructors() -> None:
    def touches_teacher(teacher: nn.Module | None, scale: int) -> dict[str, kdsr.Branch]:
        """Shrinks the teacher in place (wrong)."""
        for p in teacher.parameters():
            p.data.mul_(0.5)
        return {"student": kdsr.Branch(TinySR(scale, 4))}

    def bare_module(teacher: nn.Module | None, scale: int) -> dict[str, kdsr.Branch]:
        """Returns a module, not a branch."""
        return {"student": TinySR(scale, 4)}

    with pytest.raises(AssertionError, match="changed the teacher"):
        check_student_constructor(touches_teacher)
    with pytest.raises(AssertionError, match="kdsr.Branch"):
        check_student_constructor(bare_module)
