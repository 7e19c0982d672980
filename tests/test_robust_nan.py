"""Divergence never reaches a checkpoint: NaN gradients and weights are caught as well as NaN
losses, the error names only a checkpoint that exists, and --resume continues from it (issue 15.8)."""

from __future__ import annotations

import torch

from kdsr import Loss, hookimpl
from kdsr.engine.checkpoint import first_nonfinite
from tests.robust_kit import extra_plugin, fails, latest_step, one_stage


class NanGradAfter(Loss):
    """L1 whose gradient turns NaN from its ``after``-th call on while its value stays finite
    (d/dx sqrt(x) at 0 is inf, times the zero weight is NaN)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, student, teacher, batch):
        self.calls += 1
        loss = (student.sr - batch.hr).abs().mean()
        if self.calls > self.after:
            zero = student.sr - student.sr.detach()
            loss = loss + 0.0 * zero.sqrt().sum()
        return loss


class _NanPlugin:
    @hookimpl
    def register_losses(self, register):
        def nan_grad_after(after: int = 2) -> Loss:
            """L1 with NaN gradients from the given call on (a test plugin)."""
            return NanGradAfter(after)

        register("nan_grad_after", nan_grad_after)


def test_nan_gradient_with_finite_loss_never_reaches_a_checkpoint_and_resume_continues(tmp_path, capsys):
    cfg = one_stage(tmp_path, steps=8, checkpoint_every=1, losses=[{"name": "nan_grad_after", "options": {"after": 2}}])
    folder = tmp_path / "run" / "checkpoints" / "teacher"
    with extra_plugin(_NanPlugin(), "nanplug"):
        line = fails(capsys, ["run", str(cfg), "--quiet"], "step 2: non-finite gradient", "step-2.safetensors", "optimizer.lr")
        assert latest_step(folder) == 2  # steps 0, 1 were fine; the NaN update of step 2 was never applied
        assert str(folder / "step-2.safetensors") in line and (folder / "step-2.safetensors").exists()
        # the resumed run starts from that finite checkpoint (a fresh loss: two good steps, then NaN again)
        fails(capsys, ["run", str(cfg), "--resume", "--quiet"], "step 4: non-finite gradient", "step-4.safetensors")
        assert latest_step(folder) == 4


def test_adam_at_a_huge_lr_advice_fits_and_names_an_existing_checkpoint(tmp_path, capsys):
    cfg = one_stage(tmp_path, steps=30, checkpoint_every=1, grad_clip=1.0, optimizer={"lr": 1e8})
    line = fails(capsys, ["run", str(cfg), "--quiet"], "non-finite", "lower stages.0.optimizer.lr (now 1e+08)")
    assert "grad_clip" not in line  # clipping is already on and cannot rescue Adam at this lr
    folder = tmp_path / "run" / "checkpoints" / "teacher"
    step = latest_step(folder)  # every checkpoint on disk is finite
    assert f"step-{step}.safetensors" in line or "no checkpoint was written yet" in line


def test_first_nonfinite_names_the_tensor():
    good, bad = torch.ones(3), torch.tensor([1.0, float("inf")])
    assert first_nonfinite([("a", good), ("steps", torch.tensor(3))]) is None
    assert first_nonfinite([("a", good), ("b", bad)]) == "b"
