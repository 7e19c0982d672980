"""A run resumed from a step off the log_every grid logs exactly what the uninterrupted run logs
(the open logging window is part of every checkpoint; issue 15.14)."""

from __future__ import annotations

import json
from pathlib import Path

from kdsr import hookimpl
from kdsr.cli import main
from kdsr.errors import KdsrError
from tests.conftest import tiny_config, write_config
from tests.robust_kit import extra_plugin, fails

TIMING = {"time", "s_per_step"}


class _StopAfter:
    @hookimpl
    def after_step(self, run, step, losses):
        if step == 6:  # 7 steps done; the last checkpoint (3 steps each) is at 6, mid-window (4 steps each)
            raise KdsrError("interrupted")


def _config(tmp_path: Path, out: str) -> Path:
    cfg = tiny_config(tmp_path, steps=10, threads=1, out_dir=str(tmp_path / out))
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update(log_every=4, checkpoint_every=3)
    return write_config(tmp_path / f"{out}.yaml", cfg)


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def test_resumed_metrics_equal_uninterrupted(tmp_path, capsys):
    assert main(["run", str(_config(tmp_path, "ref")), "--quiet"]) == 0
    cfg = _config(tmp_path, "cut")
    with extra_plugin(_StopAfter(), "stopper"):
        fails(capsys, ["run", str(cfg), "--quiet"], "interrupted")
    assert main(["run", str(cfg), "--resume", "--quiet"]) == 0
    ref, cut = _records(tmp_path / "ref"), _records(tmp_path / "cut")
    assert [r["step"] for r in ref if r["kind"] == "train"] == [4, 8, 10]
    assert cut == ref
