"""What every bench script shares: where a result came from, and running a job in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kdsr import allocator  # before torch: importing kdsr configures the allocator (kdsr.allocator)
import torch

from kdsr.report import machine_info

RESULTS = Path(__file__).parent / "results"


def provenance() -> dict[str, Any]:
    """Machine, commit and date: a number without these cannot be compared with another."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent).stdout.strip()
    status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"]  # code, not results
    dirty = bool(subprocess.run(status, capture_output=True, text=True, cwd=RESULTS.parent.parent).stdout.strip())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "machine": machine_info(device),
        "commit": commit,
        "dirty_tree": dirty,
        "date": time.strftime("%Y-%m-%d"),
        "allocator": dict(allocator.state),  # kdsr.allocator: glibc thresholds and huge pages
    }


def run_child(argv: list[str], log: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command in its own process (``env``: variables added to this one's): exit code, wall seconds,
    peak RSS (GiB, that child alone) and, without a ``log`` file to write to, its stdout."""
    t0 = time.perf_counter()
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if log else None, text=True, env={**os.environ, **(env or {})})
        stdout = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    rec = {"rc": proc.returncode, "seconds": time.perf_counter() - t0, "peak_rss_gib": usage.ru_maxrss / 2**20}
    return rec if log else {**rec, "stdout": stdout}


def python_child(code: str, *args: str, log: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``run_child`` of ``python -c code args...`` with this interpreter."""
    return run_child([sys.executable, "-c", code, *args], log, env)


def write_result(name: str, result: dict[str, Any], markdown: str | None = None) -> Path:
    """``results/NAME.json`` (and ``NAME.md``) with the provenance folded in."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**provenance(), **result}, indent=1))
    if markdown is not None:
        (RESULTS / f"{name}.md").write_text(markdown)
    return path


def median_step_s(run_dir: Path, stage: str) -> float | None:
    """Median seconds per training step of one stage of a finished run (from its metrics.jsonl)."""
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    times = sorted(r["s_per_step"] for r in records if r["stage"] == stage)
    return times[len(times) // 2] if times else None
