"""Rebuild a finished run from its directory (for ``kdsr eval`` and ``kdsr infer``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdsr.config import DatasetSpec, load_config
from kdsr.engine.build import Stage, build_eval_sets, build_metrics, build_stage, pick_device
from kdsr.engine.evaluate import evaluate
from kdsr.engine.run import PROGRESS, RESOLVED, _load_final, _read_progress
from kdsr.errors import KdsrError


def load_run(run_dir: Path) -> tuple[Any, dict[str, Stage]]:
    """The run's config and its finished stages with their final weights loaded."""
    resolved = run_dir / RESOLVED
    if not resolved.exists():
        raise KdsrError(f"'{run_dir}' is not a kdsr run directory (no {RESOLVED}); pass the out_dir of a `kdsr run`")
    config = load_config(resolved)
    done = _read_progress(run_dir)["done"]
    if not done:
        raise KdsrError(f"run '{run_dir}' has no finished stage yet ({PROGRESS}); finish it with `kdsr run ... --resume`")
    stages: dict[str, Stage] = {}
    for i, sc in enumerate(config.stages):
        if sc.name not in done:
            break
        torch.manual_seed(config.seed + i)
        stage = build_stage(config, i, stages)
        _load_final(stage, run_dir)
        stages[sc.name] = stage
    return config, stages


def evaluate_run(
    run_dir: Path, folders: list[Path], ensemble: bool = False, router: Any = None
) -> dict[str, Any]:
    """Scores of every model of the run (or, with a ``router``, of the routed policy) on its eval
    sets or on ``folders``."""
    from kdsr.report import report_rows

    config, stages = load_run(run_dir)
    if folders:
        config = config.model_copy(
            update={"data": config.data.model_copy(update={"eval": [DatasetSpec(name="folder", options={"root": str(f)}) for f in folders]})}
        )
    sets, metrics = build_eval_sets(config), build_metrics(config)
    if router is not None:
        from kdsr.engine.infer import evaluate_policy

        return {f"policy:{type(router.policy).__name__.lower()}": evaluate_policy(router, sets, metrics, config.scale)}
    device = pick_device(config.device)
    branches = report_rows(stages)
    for b in branches.values():
        b.model.to(device)
    return evaluate(branches, sets, metrics, config.scale, device, config.eval.bicubic, ensemble)
