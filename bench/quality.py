"""Quality suite: every distillation method at CPU scale, one teacher, the same students and steps.

x4 on T91; the teacher is an EDSR of baseline width (64 channels, 8 blocks), trained once and cached;
every method trains students of widths 0.25 and 0.5 (16 and 32 channels, same depth) for the same
number of steps, batch, patches, learning-rate schedule and seed; PSNR/SSIM (Y) on Set5/Set14/B100,
params and Multi-Adds at a 720p output. Each job is a normal ``kdsr run`` in its own process (its
config is kept beside its report); finished jobs are reused, so an interrupted suite resumes.

    python bench/quality.py            # the suite (see SUITES for steps, seeds, sets)
    python bench/quality.py --quick    # the same pipeline, few steps, width 0.25, Set5 (6 min on 2 cores)
    python bench/quality.py --collect  # rebuild the tables/plot from the finished jobs only
    python bench/quality.py --only csd_bf16   # a check outside the suite: CSD with its VGG in bfloat16

Writes results/quality[_quick].{json,md} and results/quality[_quick]_pareto.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchlib import RESULTS, median_step_s, run_child, write_result

ROOT = Path(__file__).resolve().parent.parent
DATA = (ROOT / "../shared/data/sr").resolve()
TEACHER = {"n_feats": 64, "n_resblocks": 8}
LR = {"lr": 5.0e-4, "betas": [0.9, 0.99]}


@dataclass(frozen=True)
class Suite:
    teacher_steps: int
    student_steps: int
    heads_steps: int  # HKDSR's head pre-training on the frozen teacher (teacher-side, not student steps)
    widths: tuple[float, ...]
    seeds: tuple[int, ...]
    vgg_seeds: tuple[int, ...]  # CSD / Pro-CSD: their VGG passes make a step ~10x dearer on a CPU
    eval_sets: tuple[str, ...]


SUITES = {
    "full": Suite(3000, 1000, 300, (0.25, 0.5), (0, 1), (0,), ("Set5", "Set14", "B100")),
    "quick": Suite(300, 60, 30, (0.25,), (0,), (0,), ("Set5",)),
}


def teacher_spec(weights: Path) -> dict[str, Any]:
    return {"backbone": "edsr_baseline", "options": TEACHER, "weights": str(weights)}


def independent(width: float) -> dict[str, Any]:
    return {"backbone": "edsr_baseline", "options": {"n_feats": int(64 * width), "n_resblocks": 8}}


def cssr(widths: list[float], weights: Path) -> dict[str, Any]:
    return {"constructor": "cssr", "options": {"backbone": "edsr_baseline", "options": TEACHER, "widths": widths, "weights": str(weights)}}


# feature taps: early / middle / last body block of the 8-block student and teacher (same depth)
TAPS = {"student_taps": ["body.1", "body.4", "body"], "teacher_taps": ["body.1", "body.4", "body"]}
FAKD_TAPS = {"student_taps": ["body.1", "body.4", "upsampler.in"], "teacher_taps": ["body.1", "body.4", "upsampler.in"]}


def csd_stage(width: float, weights: Path, **csd_options: Any) -> dict[str, Any]:
    """CSD: a CSSR-Net with the full and the student width from the teacher, L1 on both, 200 x CL (K = 10)."""
    w = f"w{float(width)}"
    return {
        "student": cssr([1.0, width], weights),
        "losses": [
            {"name": "l1", "student": "w1.0"},
            {"name": "l1", "student": w},
            {"name": "csd", "student": w, "teacher": "w1.0", "weight": 200, "options": {"num_negatives": 10, **csd_options}},
        ],
    }


def student_stage(suite: Suite, width: float, weights: Path, method: str) -> list[dict[str, Any]]:
    """The stages of one method's job at one width; the student stage is always called 'student'."""
    teacher = teacher_spec(weights)
    w = f"w{float(width)}"
    kd = {"name": "output_kd", "options": {"alpha": 0.5}}
    table: dict[str, dict[str, Any]] = {
        "scratch": {"student": independent(width)},
        "slice_l1": {"student": cssr([width], weights), "losses": [{"name": "l1", "student": w}]},
        "output_kd": {"teacher": teacher, "student": independent(width), "losses": [kd]},
        # FD's weight balances its gradient against the pixel terms (plugins/kdsr-plugin-facd/tools/grad_balance.py)
        "fd": {"teacher": teacher, "student": independent(width), "losses": [kd, {"name": "fd", "weight": 0.004, "options": TAPS}]},
        "fakd": {"teacher": teacher, "student": independent(width), "losses": [{"name": "fakd", "options": FAKD_TAPS}]},
        "facd": {"teacher": teacher, "student": independent(width), "losses": [kd, {"name": "facd", "options": TAPS}]},
        "csd": csd_stage(width, weights),
        "csd_bf16": csd_stage(width, weights, vgg_precision="bf16"),  # VGG under bf16 autocast: ~2x cheaper passes
        "procsd": {  # one job trains all four widths; its 0.5 and 0.25 branches are the students
            "student": cssr([1.0, 0.75, 0.5, 0.25], weights),
            "losses": [{"name": "l1", "student": f"w{x}"} for x in (1.0, 0.75, 0.5, 0.25)]
            + [{"name": "csd", "student": "w0.25", "teacher": "w0.5", "weight": 200, "options": {"num_negatives": 10}}],
        },
        "hkdsr": {
            "teacher": {"from_stage": "heads"},
            "student": {"constructor": "hkdsr", "options": independent(width)},
            "losses": [{"name": "hkdsr"}],  # the official x3/x4 weights are the defaults
        },
    }
    common = {"optimizer": LR, "scheduler": {"name": "cosine"}, "log_every": 25, "checkpoint_every": 500}
    stages = [{"name": "student", "steps": suite.student_steps, **common, **table[method]}]
    if method == "hkdsr":
        heads = {"name": "heads", "steps": suite.heads_steps, "teacher": teacher, "student": {"constructor": "hkdsr", "options": {"freeze_backbone": True}}}
        stages.insert(0, {**common, **heads, "losses": [{"name": "hkdsr_heads_l1"}]})
    return stages


METHODS = ("scratch", "slice_l1", "output_kd", "fd", "fakd", "facd", "hkdsr", "csd", "csd_bf16", "procsd")
EXTRA_METHODS = ("csd_bf16",)  # run only when named (--only): checks, not part of the 3-hour suite
VGG_METHODS = ("csd", "csd_bf16", "procsd")
FIRST_WIDTH_ONLY = ("csd_bf16", "procsd")  # a precision check, and Pro-CSD's one job that trains every width


def config(name: str, out: Path, seed: int, stages: list[dict[str, Any]], suite: Suite) -> dict[str, Any]:
    return {
        "name": name,
        "out_dir": str(out),
        "scale": 4,
        "seed": seed,
        "data": {
            "train": {"name": "folder", "options": {"root": str(DATA / "T91")}},
            "eval": [{"name": "folder", "label": s, "options": {"root": str(DATA / s)}} for s in suite.eval_sets],
            "patch_size": 12,  # LR; 48 px HR patches keep CSD's VGG passes affordable on a CPU
            "batch_size": 16,
        },
        "stages": stages,
        "eval": {"teachers": False},  # the cached teacher is scored once, by its own job
        "profile": {"latency": False},  # latency is bench/speed_infer.py's job, on an idle machine
    }


def jobs(
    suite: Suite, work: Path, weights: Path, extra: tuple[str, ...] = ()
) -> list[tuple[str, str, float | None, int, dict[str, Any]]]:
    """(job name, method, width or None for all, seed, config), seed 0 of every method first; of the
    EXTRA_METHODS only those in ``extra``."""
    out = []
    for seed in sorted(set(suite.seeds) | set(suite.vgg_seeds)):
        for width in suite.widths:
            for method in METHODS:
                if method in EXTRA_METHODS and method not in extra:
                    continue
                seeds = suite.vgg_seeds if method in VGG_METHODS else suite.seeds
                if seed not in seeds or (method in FIRST_WIDTH_ONLY and width != suite.widths[0]):
                    continue
                tag = "" if method == "procsd" else f"_w{width}"
                name = f"{method}{tag}_s{seed}"
                stages = student_stage(suite, width, weights, method)
                out.append((name, method, None if method == "procsd" else width, seed, config(name, work / name, seed, stages, suite)))
    return out


def run_job(name: str, cfg: dict[str, Any], work: Path) -> dict[str, Any] | None:
    """Run one job unless it finished before; its record (times, peak RSS) or None if it failed."""
    out = Path(cfg["out_dir"])
    record_path = out / "bench_job.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    resume = ["--resume"] if (out / "config.resolved.yaml").exists() else []
    cfg_path = work / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"[quality] {name} ...", flush=True)
    res = run_child([sys.executable, "-m", "kdsr", "run", str(cfg_path), *resume], log=work / f"{name}.log")
    if res["rc"] != 0:
        print(f"[quality] {name} failed (exit {res['rc']}), see {work / f'{name}.log'}", flush=True)
        return None
    record_path.write_text(json.dumps(res))
    print(f"[quality] {name} done in {res['seconds']:.0f} s, peak RSS {res['peak_rss_gib']:.2f} GiB", flush=True)
    return res


def rows_of(method: str, width: float | None, report: dict[str, Any]) -> dict[float, dict[str, Any]]:
    """The student rows of a job's report, by width."""
    rows = {}
    for key, row in report["models"].items():
        if row.get("stage") != "student":
            continue
        branch = key.split(".", 1)[1] if "." in key else None
        if branch == "teacher":
            continue  # the frozen teacher, scored again by every job that loads it
        w = float(branch[1:]) if branch else width
        if method in VGG_METHODS and w == 1.0 or (method == "procsd" and w not in (0.25, 0.5)):
            continue  # the full-width branch is the teacher's copy, trained alongside
        rows[w] = row
    return rows


def job_record(out: Path, stage: str) -> dict[str, Any]:
    """A finished job's wall time, peak RSS, median step time of ``stage`` and config."""
    record = json.loads((out / "bench_job.json").read_text())
    config = yaml.safe_load((out / "config.resolved.yaml").read_text())
    return {**record, "median_s_per_step": median_step_s(out, stage), "config": config}


def collect(suite_name: str, suite: Suite, work: Path, teacher_dir: Path) -> dict[str, Any]:
    teacher = json.loads((teacher_dir / "report.json").read_text())
    weights = teacher_dir / "checkpoints" / "teacher" / "final.safetensors"
    t_row = teacher["models"]["teacher"]
    entries: dict[tuple[str, float], list[dict[str, Any]]] = {}
    jobs_done = {"teacher": job_record(teacher_dir, "teacher")}
    for name, method, width, seed, cfg in jobs(suite, work, weights, extra=EXTRA_METHODS):
        out = Path(cfg["out_dir"])
        if not (out / "bench_job.json").exists():
            continue
        report = json.loads((out / "report.json").read_text())
        jobs_done[name] = job_record(out, "student")
        for w, row in rows_of(method, width, report).items():
            entries.setdefault((method, w), []).append({"seed": seed, "job": name, **row})
    models = []
    for (method, w), runs in sorted(entries.items(), key=lambda kv: (kv[0][1], METHODS.index(kv[0][0]))):
        summary = {}
        for s in suite.eval_sets:
            for m in ("psnr", "ssim"):
                vals = [r["quality"][s][m] for r in runs if s in r["quality"]]
                summary[f"{s}/{m}"] = {"mean": statistics.fmean(vals), "spread": max(vals) - min(vals), "n": len(vals)}
        models.append({"method": method, "width": w, "params": runs[0]["params"], "macs": runs[0]["macs"], "seeds": [r["seed"] for r in runs], "mean": summary, "runs": runs})
    for m in models:  # KD gain over the scratch student of the same width, same steps
        ref = next((x for x in models if x["method"] == "scratch" and x["width"] == m["width"]), None)
        m["gain_over_scratch_db"] = {s: m["mean"][f"{s}/psnr"]["mean"] - ref["mean"][f"{s}/psnr"]["mean"] for s in suite.eval_sets} if ref else None
    return {
        "suite": suite_name,
        "settings": {**suite.__dict__, "teacher": TEACHER, "scale": 4, "batch": 16, "lr_patch": 12, "optimizer": LR, "scheduler": "cosine"},
        "teacher": {"params": t_row["params"], "macs": t_row["macs"], "quality": t_row["quality"]},
        "bicubic": teacher["models"]["bicubic"]["quality"],
        "models": models,
        "jobs": jobs_done,
    }


def markdown(result: dict[str, Any]) -> str:
    sets = result["settings"]["eval_sets"]
    head = ["method", "width", "params", "Multi-Adds@720p (G)", "seeds"] + [f"{s} PSNR / SSIM" for s in sets] + [f"gain vs scratch {s} (dB)" for s in sets]
    lines = [f"# Quality suite ({result['suite']})", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(q: dict[str, Any], s: str) -> str:
        p, ss = q[f"{s}/psnr"], q[f"{s}/ssim"]
        spread = f" ±{p['spread'] / 2:.2f}" if p["n"] > 1 else ""
        return f"{p['mean']:.2f}{spread} / {ss['mean']:.4f}"

    fixed = lambda q: {f"{s}/{m}": {"mean": q[s][m], "spread": 0, "n": 1} for s in q for m in ("psnr", "ssim")}  # noqa: E731
    t = result["teacher"]
    lines.append("| bicubic | - | - | - | - | " + " | ".join(cell(fixed(result["bicubic"]), s) for s in sets) + " |" + " - |" * len(sets))
    lines.append(f"| teacher | 1.0 | {t['params']:,} | {t['macs'] / 1e9:.2f} | - | " + " | ".join(cell(fixed(t["quality"]), s) for s in sets) + " |" + " - |" * len(sets))
    for m in result["models"]:
        gains = [f"{m['gain_over_scratch_db'][s]:+.2f}" if m["gain_over_scratch_db"] else "-" for s in sets]
        lines.append(
            f"| {m['method']} | {m['width']} | {m['params']:,} | {m['macs'] / 1e9:.2f} | {len(m['seeds'])} | "
            + " | ".join(cell(m["mean"], s) for s in sets) + " | " + " | ".join(gains) + " |"
        )
    st = result["settings"]
    lines += [
        "",
        f"x{st['scale']}, T91, LR patches {st['lr_patch']} px, batch {st['batch']}, Adam {st['optimizer']['lr']} cosine; teacher EDSR "
        f"{st['teacher']['n_feats']}x{st['teacher']['n_resblocks']} ({st['teacher_steps']} steps), students {st['student_steps']} steps "
        "(HKDSR: + head pre-training on the frozen teacher). ± is half the spread between seeds. CSD's contrastive term "
        "used a random VGG-19 unless the job's config names ImageNet weights.",
        "",
        "| job | s/step (median) | wall (s) | peak RSS (GiB) |",
        "|---|---|---|---|",
    ]
    for name, j in result["jobs"].items():
        lines.append(f"| {name} | {j['median_s_per_step']:.3f} | {j['seconds']:.0f} | {j['peak_rss_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["settings"]["eval_sets"][-1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        pts = sorted((m["macs"] / 1e9, m["mean"][f"{s}/psnr"]["mean"]) for m in result["models"] if m["method"] == method)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=method)
    t = result["teacher"]
    ax.scatter([t["macs"] / 1e9], [t["quality"][s]["psnr"]], marker="*", s=120, color="k", label="teacher")
    ax.axhline(result["bicubic"][s]["psnr"], color="grey", ls="--", lw=1, label="bicubic")
    ax.set_xscale("log")
    ax.set_xlabel("Multi-Adds at 720p output (G)")
    ax.set_ylabel(f"{s} PSNR (Y, dB)")
    ax.set_title(f"x4 students at equal steps ({result['suite']})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--collect", action="store_true", help="only rebuild the results from finished jobs")
    p.add_argument("--only", nargs="+", choices=METHODS, help=f"run only these methods ({', '.join(EXTRA_METHODS)}: only when named)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench", help="where jobs and the cached teacher live")
    args = p.parse_args()
    if not (DATA / "T91").is_dir():
        sys.exit(f"bench/quality.py needs the benchmark images in {DATA} (T91, Set5, Set14, B100)")
    suite_name = "quick" if args.quick else "full"
    suite = SUITES[suite_name]
    work = args.work / suite_name
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = work / "teacher"
    weights = teacher_dir / "checkpoints" / "teacher" / "final.safetensors"
    if not args.collect:
        stage = {"name": "teacher", "steps": suite.teacher_steps, "student": independent(1.0), "optimizer": LR,
                 "scheduler": {"name": "cosine"}, "log_every": 50, "checkpoint_every": 500}
        if run_job("teacher", config("teacher", teacher_dir, 0, [stage], suite), work) is None:
            sys.exit("the teacher job failed; nothing else can run")
        for name, method, _, _, cfg in jobs(suite, work, weights, extra=tuple(args.only or ())):
            if not args.only or method in args.only:
                run_job(name, cfg, work)
    result = collect(suite_name, suite, work, teacher_dir)
    name = "quality" if suite_name == "full" else "quality_quick"
    write_result(name, result, markdown(result))
    plot(result, RESULTS / f"{name}_pareto.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
