"""Scoring trained models (``kdsr eval``): a finished run's, or one network from a weights file.

A run is scored on its own eval sets (or on ``folders``) with its config's degradation and metrics. A
weights file is scored on ``folders`` with a config's defaults (MATLAB bicubic LR, the default metrics),
reading no training data and writing nothing. Networks are loaded by :mod:`kdsr.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsr.api import router_for
from kdsr.branches import Branch
from kdsr.config import DataConfig, DatasetSpec, RunConfig
from kdsr.data import quantize, to_float
from kdsr.engine.build import build_eval_sets, build_metrics, pick_device
from kdsr.engine.evaluate import evaluate
from kdsr.errors import KdsrError
from kdsr.inference import Router, TimeShare, budget_check
from kdsr.models import Models, open_models
from kdsr.progress import Progress
from kdsr.runtime import FP32, Runtime, with_delta


@dataclass(frozen=True)
class Tiling:
    """Tiled inference for every scored model (``kdsr eval --tile/--overlap/--batch`` without a policy)."""

    tile: int | None
    overlap: int = 16
    batch: int | None = None  # None: as many tiles per pass as the router's window size holds


class Tiled(nn.Module):
    """A branch run through a one-branch router: tiled exactly as ``kdsr infer`` runs it."""

    runs_engine = True  # the router runs the branch through the inference engine itself

    def __init__(self, branch: Branch, scale: int, tiling: Tiling, device: torch.device, runtime: Runtime = FP32) -> None:
        super().__init__()
        self.model = branch.model  # a submodule, so eval()/train() reach it
        self.router = router_for(branch, scale, tiling.tile, tiling.overlap, tiling.batch, device, runtime)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.router(x.cpu()).sr


def eval_config(models: Models, folders: list[Path]) -> RunConfig:
    """The run's config with ``folders`` as its eval sets; for a file, a config's defaults at its scale."""
    sets = [DatasetSpec(name="folder", options={"root": str(f)}) for f in folders]
    if models.config is not None:
        if not sets:
            return models.config
        return models.config.model_copy(update={"data": models.config.data.model_copy(update={"eval": sets})})
    if not sets:
        raise KdsrError(f"'{models.source}' is a weights file, which has no eval sets; give --folder DIR (HR images)")
    # defaults only, nothing to validate: a network from a file has no run config
    return RunConfig.model_construct(scale=models.scale, data=DataConfig(eval=sets), stages=[])


def evaluate_models(
    models: Models,
    folders: list[Path],
    ensemble: bool = False,
    router: Router | None = None,
    tiling: Tiling | None = None,
    runtime: Runtime = FP32,
) -> dict[str, Any]:
    """Scores of every model (or, with a ``router``, of the routed policy) per eval set; ``tiling`` runs each
    model tile by tile as ``kdsr infer`` does. Under a ``runtime`` other than torch fp32 each model is
    scored twice and listed again as ``name [runtime]`` with its ``psnr_delta`` to fp32."""
    config = eval_config(models, folders)
    sets, metrics = build_eval_sets(config), build_metrics(config)
    if router is not None:
        return {f"policy:{type(router.policy).__name__.lower()}": evaluate_policy(router, sets, metrics, config.scale)}
    device = pick_device(models.device)
    rows = dict(models.rows)
    for b in rows.values():
        b.model.to(device)
    bicubic = config.eval.bicubic and models.config is not None

    def score(rt: Runtime) -> dict[str, Any]:
        scored = {n: Branch(Tiled(b, models.scale, tiling, device, rt)) for n, b in rows.items()} if tiling else rows
        return evaluate(scored, sets, metrics, config.scale, device, bicubic, ensemble, runtime=rt)

    reference = score(FP32)
    return reference if runtime.is_default else with_delta(reference, score(runtime), runtime.label)


def evaluate_run(run_dir: Path, folders: list[Path], ensemble: bool = False, router: Router | None = None) -> dict[str, Any]:
    """Scores of a run's models (see :func:`evaluate_models`)."""
    return evaluate_models(open_models(run_dir), folders, ensemble, router)


@torch.no_grad()
def evaluate_policy(router: Router, sets, metrics, scale: int) -> dict[str, dict[str, float]]:
    """PSNR/SSIM of routed outputs per set, with the mean Multi-Adds fraction spent."""
    out: dict[str, dict[str, float]] = {}
    bar = Progress(sum(len(s.pairs) for s in sets), "eval policy", "image")
    for eval_set in sets:
        sums = dict.fromkeys(metrics, 0.0)
        macs = full = 0.0
        time_share = TimeShare()  # seconds, priced (Router.time_prices) + the policy's measured time
        for _, lr_u8, hr_u8 in eval_set.pairs:
            routed = router(to_float(lr_u8))
            sr = quantize(routed.sr[0])
            for m, fn in metrics.items():
                sums[m] += fn(sr, to_float(hr_u8), scale)
            macs, full = macs + routed.macs, full + routed.full_macs
            time_share.add(routed)
            bar.update(1)
        n = max(len(eval_set.pairs), 1)
        macs_fraction, time_share = macs / full if full else 1.0, time_share.fraction
        out[eval_set.label] = {**{m: v / n for m, v in sums.items()}, "macs_fraction": macs_fraction, "time_fraction": time_share}
        check = budget_check(router.policy, macs_fraction, time_share)
        if check is not None:  # the target beside what was achieved; a miss was warned about
            out[eval_set.label]["budget"] = check["target"]
    bar.close()
    return out
