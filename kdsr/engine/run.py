"""A whole run: stages in order, resumable, then the report.

One process owns a run directory for the whole run (:class:`kdsr.engine.lock.RunLock`). Trained
checkpoints in it are never overwritten: a plain rerun there is refused unless ``--resume`` (which
checks that the config still describes the same run) or ``--overwrite`` (which discards the old run)
is given. A run that stopped before its first checkpoint left nothing worth keeping and simply
starts again in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from kdsr.branches import unique_modules
from kdsr.config import RunConfig, dump_config
from kdsr.data import TrainPatches
from kdsr.engine import checkpoint, distributed
from kdsr.engine.build import Stage, build_eval_sets, build_metrics, build_pairs, build_stage, pick_device
from kdsr.engine.context import RunContext
from kdsr.engine.evaluate import evaluate, sample_crops
from kdsr.engine.lock import LOCK_NAME, RunLock
from kdsr.engine.logger import RunLogger
from kdsr.engine.trainer import StageTrainer
from kdsr.errors import KdsrError
from kdsr.files import write_atomic
from kdsr.plugins import get_plugins
from kdsr.rundir import METRICS, PROGRESS, RESOLVED, final_weights_path, load_final, read_progress
from kdsr.weights import save_weights

log = logging.getLogger("kdsr")

# keys that may change between a run and its resume (longer training, other logging)
RESUMABLE_CHANGES = {"steps", "eval_every", "log_every", "checkpoint_every", "device", "threads", "plugins", "latency", "latency_repeats"}


def prepare_run_dir(config: RunConfig, resume: bool, overwrite: bool = False) -> bool:
    """Make the run directory ready for this run and say whether it resumes; call it holding the
    directory's :class:`RunLock`. Refusals leave every file in place."""
    run_dir = config.run_dir
    resolved = run_dir / RESOLVED
    contents = [p for p in run_dir.iterdir() if p.name != LOCK_NAME] if run_dir.is_dir() else []
    if not contents:
        if resume:
            raise KdsrError(f"nothing to resume in '{run_dir}' (no {RESOLVED}); drop --resume to start the run")
        return False
    if not resolved.is_file():
        raise KdsrError(
            f"run directory '{run_dir}' already holds files but no kdsr run ({RESOLVED} is missing); "
            f"set name=... / out_dir=... for a new run"
        )
    if overwrite:
        _clear(contents)
        log.warning("--overwrite: removed the previous run in '%s'", run_dir)
        return False
    if not _trained(run_dir):  # stopped before its first checkpoint: nothing to keep, start again in place
        _clear(contents)
        log.info("starting '%s' again: the previous attempt stopped before its first checkpoint", run_dir)
        return False
    if not resume:
        raise KdsrError(
            f"run directory '{run_dir}' already holds files with trained checkpoints; pass --resume to continue it, "
            f"--overwrite to discard them, or set name=... / out_dir=... for a new run"
        )
    saved = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    diff = _differences(saved, config.model_dump(mode="json"))
    if diff:
        raise KdsrError(
            f"config differs from the run being resumed at '{diff[0]}'; resume with the run's own "
            f"'{resolved}', pass --overwrite to discard the old run, or start a new run (set name/out_dir)"
        )
    return True


def _trained(run_dir: Path) -> bool:
    """Whether the directory holds anything training produced (a checkpoint, a finished stage)."""
    return (run_dir / PROGRESS).exists() or any((run_dir / "checkpoints").glob("*/*.safetensors"))


def _clear(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in RESUMABLE_CHANGES:
                continue
            out += _differences(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}.{i}")]
    return [] if a == b else [path]


def run(config: RunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train every stage, evaluate, profile and write the report; returns the report.

    ``overwrite`` discards a previous run with trained checkpoints in the run directory."""
    from kdsr.engine.dynamic import dynamic_inference
    from kdsr.report import write_report

    plugins = get_plugins()
    config = config.model_copy(update={"plugins": plugins.versions()})
    rank, world_size = distributed.world()
    device = pick_device(config.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    distributed.init(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = config.run_dir
    main = distributed.is_main()
    held = contextlib.ExitStack()  # the run directory's lock, held by rank 0 until the run ends
    logger: RunLogger | None = None
    try:
        if main:
            held.enter_context(RunLock(run_dir))
            resume = prepare_run_dir(config, resume, overwrite)
        distributed.barrier()
        plugins.hook.configure(config=config)
        if main:
            write_atomic(run_dir / RESOLVED, dump_config(config).encode())
        ctx = RunContext(config, run_dir, device, rank=rank, world_size=world_size)
        progress = read_progress(run_dir) if resume else {"done": [], "results": {}}
        logger = RunLogger(run_dir, enabled=main)
        train_pairs = build_pairs(config, config.data.train, "data.train")
        eval_sets = build_eval_sets(config)
        metrics = build_metrics(config)

        bicubic: dict[str, Any] = {}

        def evaluate_branches(branches, step):
            if config.eval.bicubic and not bicubic:  # the baseline does not change: score it once
                bicubic.update(evaluate({}, eval_sets, metrics, config.scale, device, bicubic=True))
            if eval_sets and eval_sets[0].pairs:  # what the numbers look like, at every eval, in TensorBoard
                logger.images(ctx.stage.config.name, step, sample_crops(branches, eval_sets[0], config.scale, device))
            return {**bicubic, **evaluate(branches, eval_sets, metrics, config.scale, device, False, config.eval.self_ensemble)}

        finished: dict[str, Stage] = {}
        for i, sc in enumerate(config.stages):
            torch.manual_seed(config.seed + i)  # identical initial weights on every rank and every resume
            stage = build_stage(config, i, finished)
            ctx.stage = stage
            if sc.name in progress["done"]:
                finished_at = progress.get("steps", {}).get(sc.name, sc.steps)
                if finished_at != sc.steps:
                    raise KdsrError(
                        f"stage '{sc.name}' already finished at {finished_at} steps; a finished stage is not extended "
                        f"(later stages were built on it): set stages.{i}.steps={finished_at} or start a new run"
                    )
                load_final(run_dir, sc.name, stage.branches)
                finished[sc.name] = stage
                continue
            if resume and main:
                found = checkpoint.latest(run_dir / "checkpoints" / sc.name)
                _truncate_log(run_dir, sc.name, found[0] if found else 0)
            patches = TrainPatches(
                train_pairs,
                config.data.patch_size,
                config.data.batch_size,
                seed=config.seed * 1000 + i,
                rank=rank,
                world_size=world_size,
                augment=config.data.augment,
            )
            trainer = StageTrainer(ctx, stage, patches, plugins.hook, logger, evaluate_branches)
            results = trainer.run(resume)
            trainer.finish()
            if main:
                kept = f"the last checkpoint of stage '{sc.name}' is kept; continue with --resume once the disk has room"
                save_weights(_collect_final(stage), final_weights_path(run_dir, sc.name), {"stage": sc.name}, kept)
                progress["done"].append(sc.name)
                progress.setdefault("steps", {})[sc.name] = sc.steps
                progress["results"][sc.name] = results
                write_atomic(run_dir / PROGRESS, json.dumps(progress, indent=1).encode(), kept)
            distributed.barrier()
            finished[sc.name] = stage
        if main:
            dynamic = dynamic_inference(config, finished, device)
            report = write_report(config, run_dir, finished, progress["results"], device, dynamic)
        else:
            report = {}
        plugins.hook.end_run(run=ctx, report=report)
        logger.close()  # the last TensorBoard writes: a full disk here is this run's error
        return report
    finally:
        if logger is not None:
            logger.close(quiet=True)  # after an error, the run's own error is the one to report
        held.close()
        distributed.shutdown()


def _collect_final(stage: Stage) -> dict[str, torch.Tensor]:
    return checkpoint.collect(unique_modules(stage.branches, trainable=True))


def _truncate_log(run_dir: Path, stage: str, step: int) -> None:
    """Drop log records the crashed process wrote after the checkpoint we resume from."""
    path = run_dir / METRICS
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the crash
        if rec.get("stage") == stage and rec.get("step", 0) > step:
            continue
        keep.append(line)
    write_atomic(path, ("\n".join(keep) + ("\n" if keep else "")).encode())
