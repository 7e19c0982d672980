"""The run report: ``report.json``, ``report.md`` and plots.

For every trained branch (and the bicubic baseline): params, Multi-Adds at the stated output
size (fvcore), latency, and PSNR/SSIM per eval set, with the protocol written next to them.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdsr.branches import Branch
from kdsr.config import RunConfig
from kdsr.files import write_atomic
from kdsr.inference import BUDGET_TOLERANCE, budget_held
from kdsr.metrics import BICUBIC
from kdsr.profiling import count_params, lr_size_for, measure_latency, profile_macs
from kdsr.rundir import REPORT, read_records

if TYPE_CHECKING:  # annotations only: the report sits below the engine and never imports it to run
    from kdsr.engine.build import Stage


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
    runtime: Any = None,
) -> dict[str, Any]:
    """Params, Multi-Adds at an ``hr_size`` output, and (given ``latency_hr_size``) median latency of
    exactly what ``kdsr infer`` runs: the default router (automatic tiles, 8-bit output) under ``runtime``
    (:class:`kdsr.runtime.Runtime`, default torch fp32)."""
    from kdsr.api import router_for
    from kdsr.runtime import FP32

    module = BranchModule(branch).eval()
    macs = profile_macs(module, lr_size_for(hr_size, scale))
    row: dict[str, Any] = {"params": branch_params(branch), "macs": macs.total, "skipped_ops": sorted(macs.skipped_ops)}
    if latency_hr_size is not None:
        module.to(device)
        router = router_for(Branch(module), scale, "auto", device=device, runtime=runtime or FP32)
        x = torch.rand(1, 3, *lr_size_for(latency_hr_size, scale))
        row["latency_s"] = measure_latency(router, x, repeats=repeats, warmup=1).median_s
        row["runtime"] = router.runtime.label
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
                label = row_label(name, branch_name, len(trainable))
            rows[label] = branch
    return rows


def row_label(stage: str, branch: str, trained: int) -> str:
    """The report row of a stage's trained ``branch``: the stage's name when it trains one branch."""
    return stage if trained == 1 else f"{stage}.{branch}"


def write_report(
    config: RunConfig,
    run_dir: Path,
    stages: dict[str, Stage],
    results: dict[str, Any],
    device: torch.device,
    dynamic: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Profile every report row, write report.json/md and plots; ``dynamic``: the final branches' dynamic
    inference as the engine measured it (``kdsr.engine.dynamic.dynamic_inference``), a section when given."""
    caveats = stage_caveats(stages)
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
        row["caveats"] = caveats.get(stage_name, [])
        models[label] = row
    bicubic = next((r[BICUBIC] for r in results.values() if BICUBIC in r), None)
    if bicubic is not None:
        models[BICUBIC] = {"params": 0, "macs": 0, "quality": bicubic, "caveats": []}
    report: dict[str, Any] = {
        "name": config.name,
        "scale": config.scale,
        "models": models,
        "caveats": caveats,
        "protocol": protocol(config),
        "machine": machine_info(device),
        "plugins": config.plugins,
    }
    if dynamic is not None:
        report["dynamic"] = dynamic
    records = read_records(run_dir)
    figures = {"psnr_vs_macs.png": plot_quality(report, run_dir / "psnr_vs_macs.png")}
    figures["training_curves.png"] = plot_curves(records, run_dir / "training_curves.png")
    figures["eval_curves.png"] = plot_eval_curves(records, run_dir / "eval_curves.png")
    report["figures"] = [name for name, written in figures.items() if written]
    write_atomic(run_dir / REPORT, json.dumps(report, indent=1).encode())
    write_atomic(run_dir / "report.md", render_markdown(report).encode())
    return report


def stage_caveats(stages: dict[str, Stage]) -> dict[str, list[str]]:
    """Each stage's loss caveats (``Loss.caveats``), plus those of the stages it starts from or learns
    from: a student initialised from, or distilled from, a model trained with random features inherits that."""
    out: dict[str, list[str]] = {}
    for name, stage in stages.items():
        own = [c for t in stage.terms for c in getattr(t.loss, "caveats", ())]
        sc = stage.config
        sources = [m.from_stage for m in (sc.teacher, sc.student.init) if m is not None and m.from_stage is not None]
        inherited = [f"{c} (through stage '{src}')" for src in dict.fromkeys(sources) for c in out.get(src, []) if "(through" not in c]
        inherited += [c for src in dict.fromkeys(sources) for c in out.get(src, []) if "(through" in c]
        out[name] = list(dict.fromkeys(own + inherited))
    return {k: v for k, v in out.items() if v}


def protocol(config: RunConfig) -> dict[str, Any]:
    """How the numbers were made, as configured: only what ran is described."""
    metrics = config.model_dump(mode="json")["eval"]["metrics"]
    p = config.profile
    out: dict[str, Any] = {
        "metrics": metrics,
        "scoring": [describe_metric(m, config.scale) for m in metrics],
        "outputs": "quantised to 8 bits before scoring",
        "lr": f"degradation '{config.data.degradation.name}' of the HR image mod-cropped to the scale",
        "self_ensemble": config.eval.self_ensemble,
        "macs": f"fvcore, one multiply-add = 1, for a {p.hr_size[1]}x{p.hr_size[0]} output",
    }
    if p.latency:
        out["latency"] = f"median of {p.latency_repeats}, {p.latency_hr_size[1]}x{p.latency_hr_size[0]} output"
    return out


def describe_metric(spec: Any, scale: int) -> str:
    """``psnr on Y (BT.601, [16, 235]), shave 2 px`` from a metric name or ``{name, options}``."""
    name, options = (spec, {}) if isinstance(spec, str) else (spec.get("name"), spec.get("options") or {})
    if name not in ("psnr", "ssim"):
        return f"{name}" + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
    channel = "Y (BT.601 MATLAB rgb2ycbcr, [16, 235])" if options.get("y_channel", True) else "RGB"
    from kdsr.metrics import border

    return f"{name.upper()} on {channel}, shave {border(options.get('shave', 'scale'), scale)} px"


def metric_names(report: dict[str, Any]) -> list[str]:
    """Metric names in the order scored (from the results: the config may name a metric with options)."""
    names: dict[str, None] = {}
    for row in report["models"].values():
        for scores in row["quality"].values():
            names.update(dict.fromkeys(scores))
    return list(names)


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
    metrics = metric_names(report)
    has_latency = any("latency_s" in row for row in report["models"].values())
    notes = {c: i + 1 for i, c in enumerate(dict.fromkeys(c for r in report["models"].values() for c in r.get("caveats", [])))}
    head = ["model", "params", "Multi-Adds (G)"] + (["latency (s)"] if has_latency else [])
    head += [f"{s} {m.upper()}" for s in sets for m in metrics]
    lines = [
        f"# kdsr report: {report['name']} (x{report['scale']})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, row in report["models"].items():
        marks = "".join(f" [{notes[c]}]" for c in row.get("caveats", []))
        cells = [
            label + marks,
            f"{row['params'] / 1e6:.3f} M" if row["params"] else "-",
            f"{row['macs'] / 1e9:.3g}" if row["macs"] else "-",
        ]
        if has_latency:
            cells.append(f"{row['latency_s']:.3f}" if "latency_s" in row else "-")
        for s in sets:
            for m in metrics:
                v = row["quality"].get(s, {}).get(m)
                cells.append("-" if v is None else (f"{v:.2f}" if m.startswith("psnr") else f"{v:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "**Caveats** (marked [n] above):"] + [f"[{i}] {c}." for c, i in notes.items()]
    if "dynamic" in report:
        lines += ["", *dynamic_markdown(report["dynamic"])]
    p = report["protocol"]
    mach = report["machine"]
    lines += [
        "",
        "## Protocol",
        f"- Scores: {'; '.join(p['scoring'])}; {p['outputs']}" + ("; x8 self-ensemble." if p["self_ensemble"] else "."),
        f"- LR: {p['lr']}.",
        f"- Multi-Adds: {p['macs']}." + (f" Latency: {p['latency']}." if "latency" in p else ""),
        f"- Machine: {mach['device']} ({mach['cpu']}), {mach['threads']} threads, torch {mach['torch']}.",
        f"- Plugins: {', '.join(f'{k} {v}' for k, v in report['plugins'].items())}.",
        "",
    ]
    titles = {"psnr_vs_macs.png": "PSNR vs Multi-Adds", "training_curves.png": "Training curves", "eval_curves.png": "Eval PSNR during training"}
    for fig in report.get("figures", []):
        lines += [f"![{titles.get(fig, fig)}]({fig})", ""]
    return "\n".join(lines)


def dynamic_markdown(dyn: dict[str, Any]) -> list[str]:
    """The dynamic-inference section: what the budget policy over the final branches buys per eval set."""
    branches = list(next(iter(dyn["sets"].values()))["patches"]) if dyn["sets"] else []
    lines = [
        f"## Budget routing (dynamic inference) over the branches of stage '{dyn['stage']}'",
        "",
        f"Policy `{dyn['policy']}` (Multi-Adds budget {dyn['budget']:g} of the full branch; {dyn['measure']} score per "
        f"{dyn['tile']} px LR patch, overlap {dyn['overlap']}), calibrated on {dyn['calibration']}. PSNR and cost of the full "
        "branch's whole-image pass for comparison; time: wall clock of the routed vs the full pass, this machine.",
        "",
        "| set | PSNR (policy) | PSNR (full) | Multi-Adds fraction | time fraction | " + " | ".join(f"patches {b}" for b in branches) + " |",
        "|---|---|---|---|---|" + "---|" * len(branches),
    ]
    for s, r in dyn["sets"].items():
        shares = " | ".join(f"{r['patches'][b]:.0%}" for b in branches)
        lines.append(f"| {s} | {r['psnr']:.2f} | {r['full_psnr']:.2f} | {r['macs_fraction']:.1%} | {r['time_fraction']:.1%} | {shares} |")
    missed = {s: r["macs_fraction"] for s, r in dyn["sets"].items() if not budget_held(dyn["budget"], r["macs_fraction"])}
    if missed:
        lines += [
            "",
            f"The budget was not held (more than {BUDGET_TOLERANCE:.0%} off {dyn['budget']:g}) on "
            + ", ".join(f"{s} ({f:.1%})" for s, f in missed.items())
            + ": the calibration images do not score like these; calibrate on a folder like the images to serve "
            "(`kdsr eval RUN --policy budget --policy-option budget=B --policy-option calibration=FOLDER`).",
        ]
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list[Any]:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, then evenly spaced hues."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(n)]
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def label_offsets(points: list[tuple[str, float, float]], step: float = 11.0) -> dict[str, tuple[float, float]]:
    """Text offsets (points) so labels of models sharing a Multi-Adds value do not overlap: stacked
    upwards in PSNR order from the lowest, one ``step`` apart."""
    groups: dict[float, list[tuple[str, float]]] = {}
    for label, x, y in points:
        groups.setdefault(round(x, 6), []).append((label, y))
    out: dict[str, tuple[float, float]] = {}
    for members in groups.values():
        for i, (label, _) in enumerate(sorted(members, key=lambda m: m[1])):
            out[label] = (6.0, -4.0 + i * step if len(members) > 1 else 4.0)
    return out


def plot_quality(report: dict[str, Any], path: Path) -> bool:
    """PSNR vs Multi-Adds on the first eval set; one colour and legend entry per model."""
    sets = sorted({s for m in report["models"].values() for s in m["quality"]})
    first = sets[0] if sets else None
    points = []
    for label, row in report["models"].items():
        psnr = row["quality"].get(first, {}).get("psnr") if first else None
        if psnr is not None and row["macs"]:
            points.append((label, row["macs"] / 1e9, psnr))
    bic = report["models"].get(BICUBIC, {}).get("quality", {}).get(first, {}).get("psnr") if first else None
    if not points and bic is None:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    offsets = label_offsets(points)
    for (label, x, y), colour in zip(points, _colours(len(points))):
        ax.scatter(x, y, color=colour, label=label, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=offsets[label], fontsize=8, color=colour)
    if bic is not None:
        ax.axhline(bic, color="gray", linestyle="--", label="bicubic")
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(f"Multi-Adds (G) at {report['protocol']['macs'].split('for a ')[-1]}")
    ax.set_ylabel(f"PSNR (dB) on {first}")
    ax.set_title(f"{report['name']} x{report['scale']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """One panel per stage: each weighted loss term and the total over steps (log scale)."""
    train = [r for r in records if r["kind"] == "train"]
    stages = list(dict.fromkeys(r["stage"] for r in train))
    if not stages:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in train if r["stage"] == stage]
        terms = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in TRAIN_KEYS]
        for term, colour in zip(terms, _colours(len(terms))):
            pts = [(r["step"], r[term]) for r in rows if isinstance(r.get(term), (int, float)) and r[term] > 0]
            if pts:
                ax.plot(*zip(*pts), color=colour, label=term)
        if len(terms) > 1:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="black", linestyle="--", label="total")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("weighted loss (window mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


TRAIN_KEYS = {"kind", "stage", "step", "time", "loss", "lr", "s_per_step"}  # a train record's non-term keys


def plot_eval_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """PSNR of each branch over steps on the first eval set, per stage that evaluated more than once."""
    evals = [r for r in records if r["kind"] == "eval"]
    stages = [s for s in dict.fromkeys(r["stage"] for r in evals) if sum(r["stage"] == s for r in evals) > 1]
    if not stages:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in evals if r["stage"] == stage]
        branches = [b for b in dict.fromkeys(b for r in rows for b in r["results"])]
        first = next(iter(rows[0]["results"][branches[0]]), None) if branches else None
        for branch, colour in zip(branches, _colours(len(branches))):
            pts = [(r["step"], r["results"][branch][first]["psnr"]) for r in rows if "psnr" in r["results"].get(branch, {}).get(first, {})]
            if branch == BICUBIC and pts:
                ax.axhline(pts[0][1], color="gray", linestyle="--", label=BICUBIC)
            elif pts:
                ax.plot(*zip(*pts), "o-", color=colour, label=branch, markersize=3)
        ax.set_title(f"{stage} ({first})")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("PSNR (dB)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def profile_backbones(
    names: list[str],
    scales: list[int],
    options: dict[str, Any],
    hr_size: tuple[int, int],
    latency: bool = False,
    config_path: Path | None = None,
    runtime: Any = None,
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
            rows.append({"model": label, "scale": config.scale, **profile_branch(branch, config.scale, hr_size, hr_size if latency else None, runtime=runtime)})
        return rows
    backbones = registry("backbone")
    for name in names or backbones.names():
        for scale in scales:
            with torch.device("cpu" if latency else "meta"):  # meta: no memory, fvcore still counts
                model = backbones.create(name, options, where=f"backbone '{name}'", scale=scale)
            rows.append({"model": name, "scale": scale, **profile_branch(Branch(model), scale, hr_size, hr_size if latency else None, runtime=runtime)})
    return rows


TRADEOFF_HEADING = "## Dynamic inference: PSNR vs Multi-Adds"


def tradeoff_markdown(result: dict[str, Any]) -> str:
    """The trade-off as a report section: one row per fixed branch and per budget, PSNR @ Multi-Adds fraction."""
    sets = sorted(result["points"][0]["scores"]) if result["points"] else []
    lines = [
        TRADEOFF_HEADING,
        "",
        f"Budget policy calibrated on `{result['calibration']}`; cells are PSNR (dB, Y) @ Multi-Adds / full branch"
        " (time / full branch, priced by measured branch latencies).",
        "",
        "| policy | " + " | ".join(sets) + " |",
        "|---|" + "---|" * len(sets),
    ]
    for p in result["points"]:
        label = p.get("label") or (f"fixed {p['branch']}" if p["kind"] == "fixed" else f"budget {p['budget']:g}")
        cells = [f"{p['scores'][s]['psnr']:.2f} @ {p['scores'][s]['macs_fraction']:.1%}" for s in sets]
        cells = [c + (f" ({p['scores'][s]['time_fraction']:.1%})" if "time_fraction" in p["scores"][s] else "") for c, s in zip(cells, sets)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "![PSNR vs Multi-Adds fraction](tradeoff.png)", ""])


def add_tradeoff_to_report(run_dir: Path, result: dict[str, Any]) -> None:
    """Put (or replace) the trade-off section at the end of the run's report.md."""
    path = run_dir / "report.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    text = text.split(TRADEOFF_HEADING, 1)[0].rstrip("\n")
    write_atomic(path, ((text + "\n\n" if text else "") + tradeoff_markdown(result)).encode())


def plot_tradeoff(result: dict[str, Any], path: Path) -> None:
    """PSNR against the Multi-Adds fraction (top row) and the time fraction (bottom row) per eval set:
    fixed branches as labelled points, each budget policy as a curve with its budgets labelled."""
    plt = _pyplot()
    sets = sorted(result["points"][0]["scores"]) if result["points"] else []
    axes_x = [("macs_fraction", "Multi-Adds / full branch"), ("time_fraction", "time / full branch")]
    cols = max(len(sets), 1)
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 8), squeeze=False)
    fixed = [p for p in result["points"] if p["kind"] == "fixed"]
    curves: dict[str, list[dict[str, Any]]] = {}
    for p in result["points"]:
        if p["kind"] != "fixed":
            curves.setdefault(p.get("measure", "budget"), []).append(p)
    for row, (key, xlabel) in enumerate(axes_x):
        for ax, s in zip(axes[row], sets):

            def at(p: dict[str, Any], s: str = s, key: str = key) -> tuple[float, float]:
                return p["scores"][s].get(key, p["scores"][s]["macs_fraction"]), p["scores"][s]["psnr"]

            for p in fixed:
                ax.scatter(*at(p), marker="s", color="black")
                ax.annotate(p["branch"], at(p), textcoords="offset points", xytext=(4, 4), fontsize=8)
            for m, pts in curves.items():
                pts = sorted(pts, key=lambda p: at(p)[0])
                ax.plot([at(p)[0] for p in pts], [at(p)[1] for p in pts], "o-", label=f"budget policy ({m})")
                for p in pts:
                    ax.annotate(f"{p['budget']:g}", at(p), textcoords="offset points", xytext=(4, -10), fontsize=7)
            if curves:
                ax.legend(fontsize=8)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("PSNR (dB, Y)")
            ax.set_title(s)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
