"""One stage of training: the distillation step, checkpoints, periodic evaluation.

Per step the engine runs each branch that some loss reads exactly once, with the union of the
taps those losses asked for; a frozen teacher runs without autograd. Losses then see float32
outputs, whatever the autocast precision.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kdsr.branches import Branch, capture, unique_modules
from kdsr.engine import checkpoint, distributed
from kdsr.engine.build import Stage
from kdsr.engine.context import RunContext
from kdsr.engine.logger import RunLogger
from kdsr.engine.schedule import make_optimizer, make_scheduler
from kdsr.errors import KdsrError, NonFiniteLoss
from kdsr.losses import Batch, Outputs
from kdsr.progress import Progress

log = logging.getLogger("kdsr")


class StageTrainer:
    """Trains one stage from step 0 or from its latest checkpoint."""

    def __init__(
        self,
        ctx: RunContext,
        stage: Stage,
        patches: Any,
        hook: Any,
        logger: RunLogger,
        evaluate: Callable[[dict[str, Branch], int], dict[str, Any]],  # (branches, step) -> results
    ) -> None:
        self.ctx, self.stage, self.cfg = ctx, stage, stage.config
        self.patches, self.hook, self.logger, self.evaluate = patches, hook, logger, evaluate
        self.device = ctx.device
        self.folder = ctx.run_dir / "checkpoints" / self.cfg.name
        self.modules = unique_modules(stage.branches, trainable=True)
        self.loss_modules = {f"loss{j}": t.loss for j, t in enumerate(stage.terms) if _has_state(t.loss)}
        for m in [*stage.branches.values()]:
            m.model.to(self.device)
        for m in self.loss_modules.values():
            m.to(self.device)
        if self.cfg.channels_last:
            for b in stage.branches.values():
                b.model.to(memory_format=torch.channels_last)
        self.plan = self._plan()
        self.needs_bicubic = any(t.loss.needs.bicubic for t in stage.terms)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.precision == "bf16" else contextlib.nullcontext()
        )
        self._materialize_lazy(patches)
        self.params = _unique_params([*self.modules.values(), *self.loss_modules.values()])
        distributed.broadcast_parameters(self.params)
        self.optimizer = make_optimizer(self.params, self.cfg.optimizer)
        self.scheduler = make_scheduler(self.optimizer, self.cfg.scheduler, self.cfg.steps)
        self.ema = (
            {n: AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema), use_buffers=True) for n, m in self.modules.items()}
            if self.cfg.ema
            else {}
        )
        self.window = LogWindow()

    def _materialize_lazy(self, patches: Any) -> None:
        """Run the losses once on the first batch if any holds lazy modules (e.g. an adaptor
        ``nn.LazyConv2d`` whose input width is only known from the student's features), so their
        parameters exist before the optimiser is built. Runs without autograd, in eval mode."""
        lazy = any(isinstance(p, nn.parameter.UninitializedParameter) for t in self.stage.terms for p in t.loss.parameters())
        if not lazy or patches is None:
            return
        lr, hr = patches.batch(0)
        modes = {m: m.training for b in self.stage.branches.values() for m in [b.model]}
        try:
            for m in modes:
                m.eval()
            with torch.no_grad():
                self.compute_losses(lr.to(self.device), hr.to(self.device))
        finally:
            for m, mode in modes.items():
                m.train(mode)
        for m in self.loss_modules.values():
            m.to(self.device)

    # ------------------------------------------------------------------ state
    def _state_modules(self) -> dict[str, nn.Module]:
        return {**self.modules, **self.loss_modules, **{f"ema.{n}": e for n, e in self.ema.items()}}

    def save(self, step: int) -> None:
        """Checkpoint after ``step`` updates; refuses (NonFiniteLoss) if any weight or optimiser
        statistic is NaN/inf, so every checkpoint on disk is one a resume can continue from."""
        if not distributed.is_main():
            return
        optimizer = self.optimizer.state_dict()
        tensors = checkpoint.collect(self._state_modules()).items()
        moments = ((f"optimizer.{i}.{k}", v) for i, st in optimizer["state"].items() for k, v in st.items())
        bad = checkpoint.first_nonfinite([*tensors, *moments])
        if bad is not None:
            raise self._diverged(step - 1, f"the update made '{bad}' non-finite")
        state = {
            "step": step,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            "log_window": self.window.state(),
        }
        checkpoint.save(self.folder, step, self._state_modules(), state)

    def restore(self) -> int:
        found = checkpoint.latest(self.folder)
        if found is None:
            return 0
        step, weights, state = found
        bad = checkpoint.first_nonfinite(weights.items())
        if bad is not None:  # written by a kdsr that did not check
            raise KdsrError(
                f"checkpoint of step {step} in '{self.folder}' holds non-finite weights ('{bad}'); delete its "
                f"step-{step}.* files and latest.json to restart the stage, or rerun with --overwrite"
            )
        checkpoint.restore(self._state_modules(), weights, str(self.folder))
        self.window = LogWindow.from_state(state.get("log_window"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        log.info("resumed stage '%s' at step %d", self.cfg.name, step)
        return step

    # ------------------------------------------------------------------ step
    def _plan(self) -> dict[str, tuple[str, ...]]:
        """Branch -> taps to record, for the branches some loss reads (frozen ones first)."""
        plan: dict[str, list[str]] = {}
        for t in self.stage.terms:
            if t.teacher is not None:
                plan.setdefault(t.teacher, []).extend(t.loss.needs.teacher_taps)
            plan.setdefault(t.student, []).extend(t.loss.needs.student_taps)
        order = sorted(plan, key=lambda n: self.stage.branches[n].trainable)
        return {n: tuple(dict.fromkeys(plan[n])) for n in order}

    def forward(self, lr: torch.Tensor) -> dict[str, Outputs]:
        outputs: dict[str, Outputs] = {}
        for name, taps in self.plan.items():
            branch = self.stage.branches[name]
            with torch.set_grad_enabled(branch.trainable), self.autocast, capture(branch.model, taps) as store:
                sr = branch(lr)
            outputs[name] = Outputs(sr.float(), {k: v.float() for k, v in store.items()})
        return outputs

    def compute_losses(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and each weighted term for one batch."""
        if self.cfg.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        outputs = self.forward(lr)
        bicubic = F.interpolate(lr, scale_factor=self.ctx.config.scale, mode="bicubic", align_corners=False) if self.needs_bicubic else None
        batch = Batch(lr, hr, bicubic)
        total = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        for t in self.stage.terms:
            teacher = outputs[t.teacher] if t.teacher is not None else None
            term = t.weight * t.loss(outputs[t.student], teacher, batch)
            total = total + term
            terms[t.label] = term.detach()
        return total, terms

    def train_step(self, lr: torch.Tensor, hr: torch.Tensor, step: int) -> dict[str, float]:
        total, terms = self.compute_losses(lr, hr)
        values = {k: float(v) for k, v in terms.items()}
        values["loss"] = float(total.detach())
        values = distributed.mean_scalars(values, self.device)
        if not all(v == v and abs(v) != float("inf") for v in values.values()):
            bad = ", ".join(f"{k}={v}" for k, v in values.items())
            raise self._diverged(step, f"non-finite loss ({bad})")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        distributed.average_gradients(self.params)
        norm = _grad_norm(self.params, self.cfg.grad_clip)
        if not bool(torch.isfinite(norm)):  # a finite loss can still have a NaN/inf gradient
            raise self._diverged(step, f"non-finite gradient (norm {float(norm)}); the weights were not updated")
        self.optimizer.step()
        self.scheduler.step()
        for name, ema in self.ema.items():
            ema.update_parameters(self.modules[name])
        return values

    def _diverged(self, step: int, what: str) -> NonFiniteLoss:
        """The one-line error for a diverged stage: names only a checkpoint that exists (all are
        finite, see ``save``) and advice that fits (clipping cannot rescue Adam at a huge lr)."""
        found = checkpoint.latest_weights(self.folder)
        kept = f"the last checkpoint, '{found[1]}' (step {found[0]}), is finite and kept" if found else "no checkpoint was written yet"
        index = next(i for i, s in enumerate(self.ctx.config.stages) if s.name == self.cfg.name)
        return NonFiniteLoss(
            f"stage '{self.cfg.name}' step {step}: {what}; training stopped and {kept}; lower "
            f"stages.{index}.optimizer.lr (now {self.cfg.optimizer.lr:g}) or check the training data, then rerun "
            f"(with --overwrite, or a new name=...)"
        )

    # ------------------------------------------------------------------ loop
    def eval_branches(self) -> dict[str, Branch]:
        """Branches as evaluated/exported: EMA weights where EMA is on; a teacher trained by an
        earlier stage was scored there already (one from a weights file too, with ``eval.teachers: false``)."""
        out = {}
        teacher = self.cfg.teacher
        for name, b in self.stage.branches.items():
            if not b.trainable and teacher is not None and (teacher.from_stage is not None or not self.ctx.config.eval.teachers):
                continue
            owner = next((n for n, m in self.modules.items() if m is b.model), None)
            model = self.ema[owner].module if owner in self.ema else b.model
            out[name] = Branch(model, b.kwargs, b.trainable)
        return out

    def run(self, resume: bool) -> dict[str, Any]:
        for m in self.modules.values():
            m.train()
        start = self.restore() if resume else 0
        steps = self.cfg.steps
        bar = Progress(steps, f"train {self.cfg.name}", "step", every_n=self.cfg.log_every, every_s=60.0, initial=start, enabled=distributed.is_main())
        self.window.t0 = time.perf_counter()
        results: dict[str, Any] = {}
        for step in range(start, steps):
            self.hook.before_step(run=self.ctx, step=step)
            lr, hr = self.patches.batch(step)
            values = self.train_step(lr.to(self.device), hr.to(self.device), step)
            self.hook.after_step(run=self.ctx, step=step, losses=values)
            done = step + 1
            self.window.add(values)
            if done % self.cfg.log_every == 0 or done == steps:
                means = self.window.means()  # mean over the logging window
                record = {**means, "lr": self.optimizer.param_groups[0]["lr"], "s_per_step": self.window.elapsed() / self.window.steps}
                self.logger.write("train", self.cfg.name, done, record)
                bar.update(1, progress_values(means))
                self.window = LogWindow()
            else:
                bar.update(1)
            if done % self.cfg.checkpoint_every == 0 or done == steps:
                self.save(done)
            if self.cfg.eval_every and done % self.cfg.eval_every == 0 and done < steps:
                results = self._eval(done)
        bar.close()
        results = self._eval(steps)
        return results

    def _eval(self, step: int) -> dict[str, Any]:
        results = self.evaluate(self.eval_branches(), step) if distributed.is_main() else {}
        distributed.barrier()
        if results:
            self.logger.write("eval", self.cfg.name, step, {"results": results})
            for branch, sets in results.items():
                log.info("eval %s step %d %s: %s", self.cfg.name, step, branch, _fmt(sets))
        self.hook.after_eval(run=self.ctx, step=step, results=results)
        return results

    def finish(self) -> dict[str, Branch]:
        """Adopt EMA weights (if any) into the stage's networks and return the final branches."""
        for name, ema in self.ema.items():
            self.modules[name].load_state_dict(ema.module.state_dict())
        return self.stage.branches


@dataclass
class LogWindow:
    """The steps since the last ``train`` record. Saved in every checkpoint, so a run resumed from
    a step off the ``log_every`` grid logs the same means as the uninterrupted run."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0  # spent in this window by an earlier process (before a resume)
    t0: float = field(default_factory=time.perf_counter)

    def add(self, values: dict[str, float]) -> None:
        self.steps += 1
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        return {k: v / self.steps for k, v in self.sums.items()}

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.t0

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "seconds": self.elapsed()}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> LogWindow:
        """``None`` (a checkpoint from before windows were saved) starts an empty window."""
        if not state:
            return cls()
        return cls({k: float(v) for k, v in state["sums"].items()}, int(state["steps"]), float(state["seconds"]))


def _grad_norm(params: list[nn.Parameter], clip: float | None) -> torch.Tensor:
    """Total L2 norm of the gradients (before clipping them to ``clip``, if given)."""
    if clip:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.nn.utils.clip_grad_norm_(params, float("inf"))


def progress_values(means: dict[str, float]) -> dict[str, float]:
    """What a progress line shows: the total, then each weighted term (when there is more than one)."""
    terms = {k: v for k, v in means.items() if k != "loss"}
    return {"loss": means["loss"], **(terms if len(terms) > 1 else {})}


def _fmt(sets: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{s} " + " ".join(f"{m}={v:.4f}" for m, v in ms.items()) for s, ms in sets.items())


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _unique_params(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())
