"""Collect finished kdsr runs into one results file and a markdown table.

Usage: python bench/collect.py NAME RUN_DIR [RUN_DIR ...] [--note TEXT]
Writes bench/results/NAME.json (every model row of every run's report.json, with the run's resolved
config, the machine, the git commit) and bench/results/NAME.md (PSNR/SSIM table).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from benchlib import median_step_s, provenance, write_result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("name")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--note", default="")
    args = p.parse_args()
    runs = []
    for run in args.runs:
        report = json.loads((run / "report.json").read_text())
        config = yaml.safe_load((run / "config.resolved.yaml").read_text())
        steps = {s["name"]: median_step_s(run, s["name"]) for s in config["stages"]}
        runs.append({"run": run.name, "report": report, "config": config, "median_s_per_step": steps})
    out = {"name": args.name, "note": args.note, "runs": runs}
    markdown = table({**provenance(), **out})
    write_result(args.name, out, markdown)
    print(markdown)


def table(out: dict) -> str:
    sets: list[str] = []
    for r in out["runs"]:
        for row in r["report"]["models"].values():
            sets += [s for s in row["quality"] if s not in sets]
    head = ["run", "model", "params", "Multi-Adds@720p (G)"] + [f"{s} PSNR/SSIM" for s in sets]
    lines = [f"# {out['name']}", "", out["note"], "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seen_bicubic = False
    for r in out["runs"]:
        for model, row in r["report"]["models"].items():
            if model == "bicubic":
                if seen_bicubic:
                    continue
                seen_bicubic = True
            cells = [r["run"] if model != "bicubic" else "-", model, f"{row['params']:,}", f"{row['macs'] / 1e9:.2f}" if row["macs"] else "-"]
            cells += [f"{row['quality'][s]['psnr']:.2f} / {row['quality'][s]['ssim']:.4f}" if s in row["quality"] else "-" for s in sets]
            lines.append("| " + " | ".join(cells) + " |")
    m = out["runs"][0]["report"]["machine"]
    lines += ["", f"Machine: {m['device']} ({m['cpu']}), {m['threads']} threads, torch {m['torch']}; commit {out['commit'][:10]}, {out['date']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
