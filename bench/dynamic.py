"""Dynamic inference that pays: per-patch budget routing against every fixed width of one switchable network.

The network is the Pro-CSD x4 EDSR of configs/dynamic/procsd_edsr_x4.yaml (widths 1.0 / 0.75 / 0.5 / 0.25),
trained here unless ``--run`` names a finished run of it. Budget policies are calibrated per patch on the
91 T91 images (training images, never an eval set) and evaluated on Set5, Set14 and B100: PSNR (the
run's metric, Y), the Multi-Adds fraction and the wall-clock time fraction, both against ONE whole-image pass
of the full branch (``macs_fraction``, ``time_fraction``), so the context the patches recompute where branches
meet (``overhead``) is paid for in the figures. Beside them, ``headroom``: the PSNR an allocation of patches
to branches that knows the HR would reach at each budget with context and seams free, i.e. how much the
branches' per-patch differences leave to any scorer on this network.

    python bench/dynamic.py                 # train (if needed) and measure the full grid
    python bench/dynamic.py --run DIR       # measure a finished run of the config
    python bench/dynamic.py --quick         # the same pipeline: a 6-step run, Set5 (2 images), one budget per measure

Writes results/dynamic[_quick].json as {"sets": {SET: {"full_psnr", "fixed": [...], "policies": [...], "headroom": [...]}},
"machine", "commit"}, results/dynamic[_quick].md (setup, targets) and results/dynamic[_quick].png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchlib import RESULTS, provenance, run_child
from tradeoff import calibration_folder

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "dynamic" / "procsd_edsr_x4.yaml"
MEASURES = ("redegradation", "edge", "learned")
BUDGETS = (0.4, 0.5, 0.6, 0.7)
CALIBRATION_IMAGES = 91  # all of T91: 258 patches of 48 LR px at x4 for the learned scorer to regress its
# 7 features on (the first 40 images, 78 patches, fitted it worse: bench/README.md)
QUICK = {"steps": 6, "batch": 12, "sets": ("Set5",), "budgets": (0.5,), "images": 2, "calibration": 20}


def train(work: Path, quick: bool) -> Path:
    """A finished run of CONFIG (resumed if interrupted; reused if done)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["out_dir"] = str(work / "procsd")
    for spec in [cfg["data"]["train"], *cfg["data"]["eval"]]:  # the config's data paths are relative to the repo root
        spec["options"]["root"] = str((ROOT / spec["options"]["root"]).resolve())
    if quick:
        cfg["stages"][0].update(steps=QUICK["steps"], log_every=5, checkpoint_every=QUICK["steps"])
        cfg["data"]["batch_size"] = QUICK["batch"]
        cfg["data"]["eval"] = [e for e in cfg["data"]["eval"] if e["label"] in QUICK["sets"]]
    work.mkdir(parents=True, exist_ok=True)
    path = work / "procsd.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = Path(cfg["out_dir"])
    if not (run / "report.json").exists():
        resume = ["--resume"] if (run / "config.resolved.yaml").exists() else []
        res = run_child([sys.executable, "-m", "kdsr", "run", str(path), *resume, "--quiet"], log=work / "procsd.log")
        if res["rc"] != 0:
            sys.exit(f"training failed (exit {res['rc']}); see {work / 'procsd.log'}")
    return run


TIMED_SECONDS = 3.0  # a set is timed over rounds until its reference has run this long (Set5: about 5 rounds)
MAX_ROUNDS = 8


def measure(router, pairs, metric, scale: int, ref=None) -> dict[str, Any]:
    """PSNR, Multi-Adds and wall seconds of ``router`` over ``pairs``, per round of the set, timed after an
    untimed pass: the first one pays what a new window shape costs once (oneDNN primitives, allocations),
    which merged windows of many shapes and whole images of two orientations would otherwise pay unevenly.
    With a ``ref`` router (the full branch), each image of a timed round is also run by it, right after:
    ``ref_seconds`` was measured beside this router's, image by image, so a drift of the machine over the
    minutes a set takes cancels in their ratio (two passes minutes apart differed by 12 points of time
    fraction). Rounds repeat until the reference (or the router) has run ``TIMED_SECONDS``: one pass of a
    small image is noisy here (w0.5 over w1.0 on one 72x72 LR image: 0.24 to 0.35 between deciles of 40
    pairs), and Set5's five images are 0.5 s a round; every round's routing is counted (a time budget's
    prices move as it runs)."""
    from kdsr.data import quantize, to_float

    for _, lr_u8, _ in pairs:
        router(to_float(lr_u8))
    scores, seconds, ref_seconds, macs, computed, area, rounds = [], 0.0, 0.0, 0.0, 0, 0, 0
    while rounds < MAX_ROUNDS and (ref_seconds if ref is not None else seconds) < TIMED_SECONDS:
        rounds += 1
        for _, lr_u8, hr_u8 in pairs:
            lr = to_float(lr_u8)
            t0 = time.perf_counter()
            out = router(lr)
            seconds += time.perf_counter() - t0
            if ref is not None:
                t0 = time.perf_counter()
                ref(lr)
                ref_seconds += time.perf_counter() - t0
            scores.append(metric(quantize(out.sr[0]), to_float(hr_u8), scale))
            macs += out.macs
            computed += sum(out.pixels.values())
            area += lr.shape[-2] * lr.shape[-1]
    return {
        "psnr": statistics.fmean(scores),
        "macs": macs / rounds,
        "seconds": seconds / rounds,
        "ref_seconds": ref_seconds / rounds,
        "overhead": computed / area - 1,
        "rounds": rounds,
    }


def headroom(fixed_routers: dict[str, Any], pairs, metric, scale: int, tile: int, overlap: int, budgets: tuple[float, ...]) -> list[dict[str, Any]]:
    """What per-patch routing could gain on these images with the HR known and context and seams free: per
    image, the patches (the policies' tiling's cores) start on the cheapest branch and are moved up, one move
    at a time, to whichever wider branch removes the most squared error (Y, the metric's shave) per Multi-Add,
    while the image's cores stay within the budget. Each branch's pixels come from its whole-image pass.
    Greedy, so not a proven bound; it says how much the branches' per-patch differences leave to any scorer
    (the policies pay ~10% context on top)."""
    import torch

    from kdsr.data import to_float
    from kdsr.metrics import rgb_to_y
    from kdsr.tiling import windows

    names = sorted(fixed_routers, key=lambda n: fixed_routers[n].cost[n])
    cost = [fixed_routers[n].cost[n] / fixed_routers[names[-1]].cost[names[-1]] for n in names]
    images = []  # per image: squared error of each branch on each core, shaved pixels, core pixels
    for _, lr_u8, hr_u8 in pairs:
        lr, hr = to_float(lr_u8), to_float(hr_u8)
        tiles = windows(*lr.shape[-2:], tile, overlap)
        errors = []
        for n in names:
            sr = fixed_routers[n](lr).sr[0]
            d = (rgb_to_y(sr.double()) - rgb_to_y(hr.double()))[0]
            inner = torch.zeros_like(d)
            inner[scale:-scale, scale:-scale] = 1
            se = d * d * inner
            shaved = float(inner.sum())
            psnr = 10 * math.log10(255**2 * shaved / float(se.sum()))
            if abs(psnr - metric(sr, hr, scale)) > 1e-6:  # the run's metric must be this one (Y, shave = scale)
                raise RuntimeError(f"headroom: PSNR {psnr} differs from the run's metric {metric(sr, hr, scale)}")
            errors.append([float(se[t.core[0] * scale : t.core[1] * scale, t.core[2] * scale : t.core[3] * scale].sum()) for t in tiles])
        images.append((errors, shaved, [(t.core[1] - t.core[0]) * (t.core[3] - t.core[2]) for t in tiles]))
    out = []
    for budget in budgets:
        psnrs, spent_fractions = [], []
        for errors, shaved, pixels in images:
            level, cap = [0] * len(pixels), budget * sum(pixels)
            spent = cost[0] * sum(pixels)
            while True:
                moves = [
                    ((errors[level[i]][i] - errors[k][i]) / ((cost[k] - cost[level[i]]) * p), i, k)
                    for i, p in enumerate(pixels)
                    for k in range(level[i] + 1, len(names))
                    if spent + (cost[k] - cost[level[i]]) * p <= cap
                ]
                if not moves:
                    break
                _, i, k = max(moves)
                spent += (cost[k] - cost[level[i]]) * pixels[i]
                level[i] = k
            psnrs.append(10 * math.log10(255**2 * shaved / sum(errors[level[i]][i] for i in range(len(pixels)))))
            spent_fractions.append(spent / sum(pixels))
        out.append({"budget": budget, "psnr": statistics.fmean(psnrs), "macs_fraction": statistics.fmean(spent_fractions)})
    return out


def bench(run: Path, calibration: Path, sets: tuple[str, ...], budgets: tuple[float, ...], tile: int, overlap: int, images: int | None) -> dict[str, Any]:
    from kdsr.engine.build import build_eval_sets, build_metrics
    from kdsr.engine.infer import make_router
    from kdsr.models import open_models

    models = open_models(run)
    metrics = build_metrics(models.config)
    metric = metrics.get("psnr") or next(iter(metrics.values()))
    eval_sets = {
        s.label: [s.pairs[i] for i in range(min(images or len(s.pairs), len(s.pairs)))] for s in build_eval_sets(models.config) if s.label in sets
    }
    # every fixed width as it deploys: one whole-image pass (no tiles); the full one is the reference
    fixed_routers = {name: make_router(models, "fixed", {"branch": name}, None, overlap) for name in models.candidates}
    full_name = max(fixed_routers, key=lambda n: fixed_routers[n].cost[n])
    policies = []
    for m in MEASURES:
        for b in budgets:
            options = {"budget": b, "calibration": str(calibration), "measure": m, "per": "patch"}
            policies.append((f"budget-{m}", b, make_router(models, "budget", options, tile, overlap)))
    for b in budgets:  # the calibrated thresholds as they are (hold: calibration): what holding per image changes
        options = {"budget": b, "calibration": str(calibration), "measure": "redegradation", "per": "patch", "hold": "calibration"}
        policies.append(("budget-redegradation-calibrated", b, make_router(models, "budget", options, tile, overlap)))
    time_budget = budgets[len(budgets) // 2]  # one time budget per measure below: priced by the measured branch latencies
    for m in ("redegradation", "learned"):
        options = {"budget": time_budget, "calibration": str(calibration), "measure": m, "per": "patch", "cost": "time"}
        policies.append((f"budget-{m}-time", time_budget, make_router(models, "budget", options, tile, overlap)))
    out: dict[str, Any] = {}
    for label, pairs in eval_sets.items():
        ref = measure(fixed_routers[full_name], pairs, metric, models.scale)
        row: dict[str, Any] = {"full_psnr": ref["psnr"], "fixed": [], "policies": []}

        def fractions(r: dict[str, Any]) -> dict[str, float]:
            return {"macs_fraction": r["macs"] / ref["macs"], "time_fraction": r["seconds"] / (r["ref_seconds"] or r["seconds"])}

        full_router = fixed_routers[full_name]
        for name, router in sorted(fixed_routers.items(), key=lambda kv: kv[1].cost[kv[0]]):
            r = ref if name == full_name else measure(router, pairs, metric, models.scale, full_router)
            row["fixed"].append({"name": name, "psnr": r["psnr"], **fractions(r), "rounds": r["rounds"]})
        for name, b, router in policies:
            r = measure(router, pairs, metric, models.scale, full_router)
            # overhead: LR pixels the windows computed beyond one whole-image pass (the patches' context where branches meet)
            row["policies"].append({"name": name, "budget": b, "psnr": r["psnr"], **fractions(r), "overhead": r["overhead"], "rounds": r["rounds"]})
        row["headroom"] = headroom(fixed_routers, pairs, metric, models.scale, tile, overlap, budgets)
        out[label] = row
        print(label, json.dumps(row, indent=1), flush=True)
    return out


def line_at(fixed: list[dict[str, Any]], macs_fraction: float) -> float | None:
    """The fixed widths' PSNR line (linear between neighbouring widths) at ``macs_fraction``; None outside them.
    A policy lies above every fixed width where its PSNR is above this line at its Multi-Adds."""
    pts = sorted((f["macs_fraction"], f["psnr"]) for f in fixed)
    seg = next(((a, b) for a, b in zip(pts, pts[1:]) if a[0] <= macs_fraction <= b[0]), None)
    if seg is None:
        return None
    (x0, y0), (x1, y1) = seg
    return y0 + (y1 - y0) * (macs_fraction - x0) / max(x1 - x0, 1e-12)


def above_line(point: dict[str, Any], fixed: list[dict[str, Any]]) -> bool:
    """Whether ``point`` lies above every fixed width: above their line at its Multi-Adds (False outside it)."""
    line = line_at(fixed, point["macs_fraction"])
    return line is not None and point["psnr"] > line


def margin(point: dict[str, Any], fixed: list[dict[str, Any]]) -> str:
    """``point``'s PSNR over the fixed widths' line at its Multi-Adds, in mdB ("n/a" outside the line)."""
    line = line_at(fixed, point["macs_fraction"])
    return "n/a" if line is None else f"{1000 * (point['psnr'] - line):+.1f}"


def targets(sets: dict[str, Any]) -> list[str]:
    """The issue's targets, each with whether this result meets it."""
    import inspect

    from kdsr.builtin.policies import budget
    from kdsr.inference import budget_held

    default_measure = inspect.signature(budget).parameters["measure"].default  # what `--policy budget` routes by

    lines = []
    for label, row in sets.items():
        fixed = row["fixed"]
        for p in row["policies"]:  # every measure's Multi-Adds budgets (and the time budgets)
            ok = above_line(p, fixed)
            lines.append(
                f"- {label} {p['name']} {p['budget']}: {p['psnr']:.3f} dB ({p['psnr'] - row['full_psnr']:+.3f}) at {p['macs_fraction']:.1%} "
                f"Multi-Adds, {p['time_fraction']:.1%} time (context overhead {p['overhead']:.0%}); above the fixed widths: {'yes' if ok else 'no'}"
            )
    for label, row in sets.items():
        parts = []
        for name in dict.fromkeys(p["name"] for p in row["policies"] if not p["name"].endswith("-time")):
            macs = [p for p in row["policies"] if p["name"] == name]
            held = sum(budget_held(p["budget"], p["macs_fraction"]) for p in macs)
            parts.append(f"{name} {held} of {len(macs)} (" + ", ".join(f"{p['budget']:g} -> {p['macs_fraction']:.2f}" for p in macs) + ")")
        timed = [p for p in row["policies"] if p["name"].endswith("-time")]
        parts += [f"{p['name']} (time) {p['budget']:g} -> {p['time_fraction']:.2f} ({'held' if budget_held(p['budget'], p['time_fraction']) else 'not held'})" for p in timed]
        lines.append(f"- {label}: budgets held within 10% (budget -> spent): " + "; ".join(parts))
        if row.get("headroom"):
            lines.append(
                f"- {label}: headroom, the HR-known allocation of patches to branches (no context, no seams; bench/dynamic.py headroom), "
                "over the fixed widths' line (budget: mdB at its Multi-Adds): "
                + ", ".join(f"{h['budget']:g}: {margin(h, row['fixed'])} at {h['macs_fraction']:.2f}" for h in row["headroom"])
            )
        gaps = [abs(p["time_fraction"] - p["macs_fraction"]) for p in row["policies"]]
        lines.append(f"- {label}: time within 0.1 of Multi-Adds: {sum(g <= 0.1 for g in gaps)} of {len(gaps)} policies (largest gap {max(gaps):.3f})")
        default = [p for p in row["policies"] if p["name"].startswith(f"budget-{default_measure}")]
        if default:
            above = sum(above_line(p, row["fixed"]) for p in default)
            gaps = [abs(p["time_fraction"] - p["macs_fraction"]) for p in default]
            lines.append(
                f"- {label}: the budget policy as it defaults (measure {default_measure}): above the fixed widths at {above} of {len(default)} "
                f"budgets, time within 0.1 of Multi-Adds at {sum(g <= 0.1 for g in gaps)} of {len(default)} (largest gap {max(gaps):.3f})"
            )
    b100 = sets.get("B100")
    if b100:
        good = [p for p in b100["policies"] if p["macs_fraction"] <= 0.6 and p["psnr"] >= b100["full_psnr"] - 0.05 and p["time_fraction"] <= 0.7]
        lines.append(
            "- B100, against one whole-image pass of the full branch: >= 40% Multi-Adds and >= 30% time saved at <= 0.05 dB below it: "
            + (f"yes, {good[0]['name']} {good[0]['budget']}" if good else "no")
        )
    return lines


def plot(sets: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(sets), figsize=(5 * len(sets), 8), squeeze=False)
    for col, (label, row) in enumerate(sets.items()):
        for r, key in enumerate(("macs_fraction", "time_fraction")):
            ax = axes[r][col]
            ax.plot([f[key] for f in row["fixed"]], [f["psnr"] for f in row["fixed"]], "s--", color="black", label="fixed widths")
            for f in row["fixed"]:
                ax.annotate(f["name"], (f[key], f["psnr"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
            if key == "macs_fraction" and row.get("headroom"):
                pts = row["headroom"]
                ax.plot([h[key] for h in pts], [h["psnr"] for h in pts], ":", color="grey", label="headroom (HR known, no context)")
            for name in dict.fromkeys(p["name"] for p in row["policies"]):
                pts = sorted((p for p in row["policies"] if p["name"] == name), key=lambda p: p[key])
                ax.plot([p[key] for p in pts], [p["psnr"] for p in pts], "o-", label=name)
                for p in pts:
                    ax.annotate(f"{p['budget']:g}", (p[key], p["psnr"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
            ax.set_xlabel("Multi-Adds / full branch" if key == "macs_fraction" else "time / full branch")
            ax.set_ylabel("PSNR (dB, Y)")
            ax.set_title(label)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a finished run of configs/dynamic/procsd_edsr_x4.yaml (default: train it)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "dynamic")
    p.add_argument("--quick", action="store_true", help="a 6-step run, Set5 (2 images), one budget per measure")
    p.add_argument("--tile", type=int, default=48, help="LR patch side (default 48: B100's x4 LR is 6 patches)")
    p.add_argument("--overlap", type=int, default=2,
                   help="LR context per window (default 2: on 50 B100 images, redegradation budget 0.6 lost 0.052 / 0.043 / 0.045 dB "
                        "at overlap 0 / 2 / 4, spending 62 / 58 / 60%% of the Multi-Adds with 0 / 10 / 22%% context)")
    p.add_argument("--render", action="store_true", help="rewrite the .md and .png from the existing .json (no measuring)")
    args = p.parse_args()
    work = args.work / ("quick" if args.quick else "full")
    name = "dynamic_quick" if args.quick else "dynamic"
    if args.render:
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        write_report(name, saved["sets"], saved["setup"], saved)
        return
    run = args.run or train(work, args.quick)
    sets, budgets = (QUICK["sets"], QUICK["budgets"]) if args.quick else (("Set5", "Set14", "B100"), BUDGETS)
    calibration = calibration_folder(work, QUICK["calibration"] if args.quick else CALIBRATION_IMAGES)
    result = bench(run, calibration, sets, budgets, args.tile, args.overlap, QUICK["images"] if args.quick else None)
    info = provenance()
    setup = {"run": str(run), "calibration": str(calibration), "tile": args.tile, "overlap": args.overlap, "quick": args.quick}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"sets": result, "setup": setup, **info}, indent=1))
    write_report(name, result, setup, info)


def write_report(name: str, result: dict[str, Any], setup_: dict[str, Any], info: dict[str, Any]) -> None:
    """results/<name>.md (setup, targets met or not) and <name>.png."""
    run, calibration, tile, overlap, quick = (setup_[k] for k in ("run", "calibration", "tile", "overlap", "quick"))
    setup = [
        f"# Dynamic inference ({'quick' if quick else 'full'})",
        "",
        f"Run `{run}`; commit {info['commit']} (dirty tree: {info.get('dirty_tree')}), {info.get('date', '')}.",
        f"Patches of {tile} LR px, overlap {overlap}; budgets calibrated per patch on `{calibration}`.",
        "Fractions are against one whole-image pass of the full branch; fixed widths are whole-image passes; policies route "
        "patches, neighbours served by one branch merged into one window, timed after an untimed pass over each set, each image "
        "followed by the full branch's whole-image pass (the time fraction's reference, measured beside it), in rounds of the "
        f"set until the reference has run {TIMED_SECONDS:g} s (at most {MAX_ROUNDS}; `rounds` in the json).",
        "",
        "## Targets",
        "",
        *targets(result),
        "",
        f"![PSNR vs Multi-Adds and time]({name}.png)",
        "",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(setup))
    plot(result, RESULTS / f"{name}.png")
    print("\n".join(setup))


if __name__ == "__main__":
    main()
