"""Optimiser and learning-rate schedule from the stage config."""

from __future__ import annotations

import math

import torch

from kdsr.config import OptimizerConfig, SchedulerConfig


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_factor(cfg: SchedulerConfig, total_steps: int, base_lr: float):
    """step -> multiplier of the base learning rate (linear warm-up, then the schedule)."""

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.name == "step":
            return cfg.gamma ** (step // cfg.step_size)
        if cfg.name == "multistep":
            return cfg.gamma ** sum(step >= m for m in cfg.milestones)
        if cfg.name == "cosine":
            span = max(total_steps - cfg.warmup_steps, 1)
            t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
            floor = cfg.min_lr / base_lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return factor


def make_scheduler(opt: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, total_steps, opt.defaults["lr"]))
