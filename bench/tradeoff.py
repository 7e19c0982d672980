"""PSNR vs Multi-Adds of a switchable model: every fixed width, and the budget policy at several budgets.

Runs ``kdsr tradeoff`` on a finished run of the quality suite (default: its Pro-CSD job, four widths),
with the budget policy calibrated on the first 12 T91 images (training images, never an eval set), and
copies its tradeoff.json / tradeoff.png into results/.

Usage: python bench/tradeoff.py [--run runs/bench/full/procsd_s0] [--name procsd_tradeoff] [--budgets 0.3,0.4,0.5,0.6,0.7]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from benchlib import RESULTS, run_child, write_result

ROOT = Path(__file__).resolve().parent.parent
DATA = (ROOT / "../shared/data/sr").resolve()


def calibration_folder(work: Path, count: int = 12) -> Path:
    """``work/calibration_t91``: links to the first ``count`` T91 images, and only those."""
    folder = work / "calibration_t91"
    folder.mkdir(parents=True, exist_ok=True)
    chosen = sorted((DATA / "T91").glob("*.png"))[:count]
    names = {png.name for png in chosen}
    for link in folder.iterdir():
        if link.name not in names:
            link.unlink()
    for png in chosen:
        target = folder / png.name
        if not target.exists():
            target.symlink_to(png)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "bench" / "full" / "procsd_s0")
    p.add_argument("--name", default="procsd_tradeoff")
    p.add_argument("--budgets", default="0.3,0.4,0.5,0.6,0.7")
    p.add_argument("--measure", default="redegradation")
    args = p.parse_args()
    calib = calibration_folder(args.run.parent)
    log = args.run.parent / f"{args.name}.log"
    cmd = [sys.executable, "-m", "kdsr", "tradeoff", str(args.run), "--calibration", str(calib), "--budgets", args.budgets, "--measure", args.measure]
    res = run_child(cmd, log=log)
    if res["rc"] != 0:
        sys.exit(f"kdsr tradeoff failed (exit {res['rc']}); see {log}")
    result = json.loads((args.run / "tradeoff.json").read_text())
    write_result(args.name, {"command": " ".join(cmd[1:]), "seconds": res["seconds"], **result})
    shutil.copy(args.run / "tradeoff.png", RESULTS / f"{args.name}.png")
    for point in result["points"]:
        label = point.get("branch") or f"budget {point['budget']}"
        print(label, {s: f"{v['psnr']:.2f} dB @ {v['macs_fraction']:.1%}" for s, v in point["scores"].items()})


if __name__ == "__main__":
    main()
