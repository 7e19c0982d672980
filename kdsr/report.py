"""The run report: ``report.json``, ``report.md`` and plots.

For every trained branch (and the bicubic baseline): params, Multi-Adds at the stated output
size (fvcore), latency, and PSNR/SSIM per eval set, with the protocol written next to them.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsr.branches import Branch
from kdsr.config import RunConfig
from kdsr.engine.build import Stage
from kdsr.engine.checkpoint import write_atomic
from kdsr.engine.evaluate import BICUBIC
from kdsr.engine.logger import read_records
from kdsr.profiling import count_params, lr_size_for, measure_latency, profile_macs


class BranchModule(nn.Module):
    """A branch as a plain module (fvcore traces ``forward(x)``)."""

    def __init__(self, branch: Branch) -> None:
        super().__init__()
        self.model, self.kwargs = branch.model, branch.kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, **self.kwargs)


def branch_params(branch: Branch) -> int:
    """Parameters a branch uses: ``model.branch_params(**kwargs)`` if the network defines it (weight-shared widths)."""
    fn = getattr(branch.model, "branch_params", None)
    return int(fn(**branch.kwargs)) if callable(fn) else count_params(branch.model)


def profile_branch(
    branch: Branch,
    scale: int,
    hr_size: tuple[int, int],
    latency_hr_size: tuple[int, int] | None = None,
    repeats: int = 5,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Params, Multi-Adds at an ``hr_size`` output, and (given ``latency_hr_size``) median latency."""
    module = BranchModule(branch).eval()
    macs = profile_macs(module, lr_size_for(hr_size, scale))
    row: dict[str, Any] = {"params": branch_params(branch), "macs": macs.total, "skipped_ops": sorted(macs.skipped_ops)}
    if latency_hr_size is not None:
        x = torch.rand(1, 3, *lr_size_for(latency_hr_size, scale), device=device)
        row["latency_s"] = measure_latency(module.to(device), x, repeats=repeats, warmup=1).median_s
    return row


def report_rows(stages: dict[str, Stage]) -> dict[str, Branch]:
    """Rows of the report: every trained branch, plus teachers loaded from weights files."""
    rows: dict[str, Branch] = {}
    for name, stage in stages.items():
        trainable = stage.trainable
        for branch_name, branch in stage.branches.items():
            if not branch.trainable:
                if stage.config.teacher is None or stage.config.teacher.from_stage is not None:
                    continue
                label = f"{name}.teacher"
            else:
                label = name if len(trainable) == 1 else f"{name}.{branch_name}"
            rows[label] = branch
    return rows


def write_report(
    config: RunConfig, run_dir: Path, stages: dict[str, Stage], results: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for label, branch in report_rows(stages).items():
        stage_name = label.split(".")[0]
        branch_name = label.split(".", 1)[1] if "." in label else next(iter(stages[stage_name].trainable))
        p = config.profile
        row = profile_branch(
            branch, config.scale, tuple(p.hr_size), tuple(p.latency_hr_size) if p.latency else None, p.latency_repeats, device
        )
        row["stage"] = stage_name
        row["quality"] = results.get(stage_name, {}).get(branch_name, {})
        models[label] = row
    bicubic = next((r[BICUBIC] for r in results.values() if BICUBIC in r), None)
    if bicubic is not None:
        models[BICUBIC] = {"params": 0, "macs": 0, "quality": bicubic}
    report = {
        "name": config.name,
        "scale": config.scale,
        "models": models,
        "protocol": {
            "metrics": config.eval.metrics,
            "y_channel": "BT.601 (MATLAB rgb2ycbcr), [16, 235]",
            "shave": config.scale,
            "outputs": "quantised to 8 bits before scoring",
            "lr": f"degradation '{config.data.degradation.name}' of the HR image mod-cropped to the scale",
            "self_ensemble": config.eval.self_ensemble,
            "macs": f"fvcore, one multiply-add = 1, for a {config.profile.hr_size[1]}x{config.profile.hr_size[0]} output",
            "latency": f"median of {config.profile.latency_repeats}, {config.profile.latency_hr_size[1]}x{config.profile.latency_hr_size[0]} output",
        },
        "machine": machine_info(device),
        "plugins": config.plugins,
    }
    write_atomic(run_dir / "report.json", json.dumps(report, indent=1).encode())
    write_atomic(run_dir / "report.md", render_markdown(report).encode())
    plot_quality(report, run_dir / "psnr_vs_macs.png")
    plot_curves(read_records(run_dir), run_dir / "training_curves.png")
    return report


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a result was measured on: results from different machines are not comparable."""
    info = {
        "device": str(device),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render_markdown(report: dict[str, Any]) -> str:
    sets = sorted({s for m in report["models"].values() for s in m["quality"]})
    metrics = report["protocol"]["metrics"]
    head = ["model", "params", "Multi-Adds (G)", "latency (s)"] + [f"{s} {m.upper()}" for s in sets for m in metrics]
    lines = [
        f"# kdsr report: {report['name']} (x{report['scale']})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, row in report["models"].items():
        cells = [
            label,
            f"{row['params'] / 1e6:.3f} M" if row["params"] else "-",
            f"{row['macs'] / 1e9:.3g}" if row["macs"] else "-",
            f"{row['latency_s']:.3f}" if "latency_s" in row else "-",
        ]
        for s in sets:
            for m in metrics:
                v = row["quality"].get(s, {}).get(m)
                cells.append("-" if v is None else (f"{v:.2f}" if m == "psnr" else f"{v:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    p = report["protocol"]
    mach = report["machine"]
    lines += [
        "",
        "## Protocol",
        f"- PSNR/SSIM on Y ({p['y_channel']}), shave {p['shave']} px, {p['outputs']}; self-ensemble: {p['self_ensemble']}.",
        f"- LR: {p['lr']}.",
        f"- Multi-Adds: {p['macs']}. Latency: {p['latency']}.",
        f"- Machine: {mach['device']} ({mach['cpu']}), {mach['threads']} threads, torch {mach['torch']}.",
        f"- Plugins: {', '.join(f'{k} {v}' for k, v in report['plugins'].items())}.",
        "",
        "![PSNR vs Multi-Adds](psnr_vs_macs.png)",
        "",
        "![Training curves](training_curves.png)",
        "",
    ]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    sets = sorted({s for m in report["models"].values() for s in m["quality"]})
    first = sets[0] if sets else None
    for label, row in report["models"].items():
        psnr = row["quality"].get(first, {}).get("psnr") if first else None
        if psnr is None or not row["macs"]:
            continue
        ax.scatter(row["macs"] / 1e9, psnr)
        ax.annotate(label, (row["macs"] / 1e9, psnr), textcoords="offset points", xytext=(4, 4), fontsize=8)
    bic = report["models"].get(BICUBIC, {}).get("quality", {}).get(first, {}).get("psnr") if first else None
    if bic is not None:
        ax.axhline(bic, color="gray", linestyle="--", label="bicubic")
        ax.legend()
    ax.set_xlabel(f"Multi-Adds (G) at {report['protocol']['macs'].split('for a ')[-1]}")
    ax.set_ylabel(f"PSNR (dB, Y) on {first}")
    ax.set_title(f"{report['name']} x{report['scale']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    stages = list(dict.fromkeys(r["stage"] for r in records if r["kind"] == "train"))
    for stage in stages:
        pts = [(r["step"], r["loss"]) for r in records if r["kind"] == "train" and r["stage"] == stage]
        if pts:
            ax.plot(*zip(*pts), label=stage)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    if stages:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def profile_backbones(
    names: list[str],
    scales: list[int],
    options: dict[str, Any],
    hr_size: tuple[int, int],
    latency: bool = False,
    config_path: Path | None = None,
) -> list[dict[str, Any]]:
    """Params and Multi-Adds (and optionally latency) of registered backbones or of a config's branches."""
    from kdsr.plugins import registry

    rows: list[dict[str, Any]] = []
    if config_path is not None:
        from kdsr.config import load_config
        from kdsr.engine.build import build_stage

        config = load_config(config_path)
        finished: dict[str, Stage] = {}
        with torch.device("cpu" if latency else "meta"):
            for i, sc in enumerate(config.stages):
                finished[sc.name] = build_stage(config, i, finished, load=False)
        for label, branch in report_rows(finished).items():
            rows.append({"model": label, "scale": config.scale, **profile_branch(branch, config.scale, hr_size, hr_size if latency else None)})
        return rows
    backbones = registry("backbone")
    for name in names or backbones.names():
        for scale in scales:
            with torch.device("cpu" if latency else "meta"):  # meta: no memory, fvcore still counts
                model = backbones.create(name, options, where=f"backbone '{name}'", scale=scale)
            rows.append({"model": name, "scale": scale, **profile_branch(Branch(model), scale, hr_size, hr_size if latency else None)})
    return rows


TRADEOFF_HEADING = "## Dynamic inference: PSNR vs Multi-Adds"


def tradeoff_markdown(result: dict[str, Any]) -> str:
    """The trade-off as a report section: one row per fixed branch and per budget, PSNR @ Multi-Adds fraction."""
    sets = sorted(result["points"][0]["scores"]) if result["points"] else []
    lines = [
        TRADEOFF_HEADING,
        "",
        f"Budget policy calibrated on `{result['calibration']}`; cells are PSNR (dB, Y) @ Multi-Adds / full branch.",
        "",
        "| policy | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for p in result["points"]:
        label = f"fixed {p['branch']}" if p["kind"] == "fixed" else f"budget {p['budget']:g}"
        cells = [f"{p['scores'][s]['psnr']:.2f} @ {p['scores'][s]['macs_fraction']:.1%}" for s in sets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "![PSNR vs Multi-Adds fraction](tradeoff.png)", ""])


def add_tradeoff_to_report(run_dir: Path, result: dict[str, Any]) -> None:
    """Put (or replace) the trade-off section at the end of the run's report.md."""
    path = run_dir / "report.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    text = text.split(TRADEOFF_HEADING, 1)[0].rstrip("\n")
    write_atomic(path, ((text + "\n\n" if text else "") + tradeoff_markdown(result)).encode())


def plot_tradeoff(result: dict[str, Any], path: Path) -> None:
    """PSNR vs Multi-Adds fraction per eval set: fixed branches as points, the budget policy as a curve."""
    plt = _pyplot()
    sets = sorted(result["points"][0]["scores"]) if result["points"] else []
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(5 * max(len(sets), 1), 4), squeeze=False)
    for ax, s in zip(axes[0], sets):
        fixed = [p for p in result["points"] if p["kind"] == "fixed"]
        budget = sorted((p for p in result["points"] if p["kind"] == "budget"), key=lambda p: p["scores"][s]["macs_fraction"])
        for p in fixed:
            ax.scatter(p["scores"][s]["macs_fraction"], p["scores"][s]["psnr"], marker="s")
            ax.annotate(p["branch"], (p["scores"][s]["macs_fraction"], p["scores"][s]["psnr"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if budget:
            ax.plot([p["scores"][s]["macs_fraction"] for p in budget], [p["scores"][s]["psnr"] for p in budget], "o-", label="budget policy")
            ax.legend()
        ax.set_xlabel("Multi-Adds / full branch")
        ax.set_ylabel("PSNR (dB, Y)")
        ax.set_title(s)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
