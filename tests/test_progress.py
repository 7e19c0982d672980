"""Progress without a terminal: plain lines in a redirected log (run, eval, infer), bars only on a TTY."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdsr.progress import Progress, format_duration
from kdsr.testing import make_image_folder
from tests.conftest import tiny_config, write_config


def test_plain_lines_every_n_with_values_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="kdsr")
    bar = Progress(6, "train distil", "step", every_n=2, every_s=None, tty=False)
    for i in range(6):
        bar.update(1, {"loss": 0.5, "l1[w0.5]": 0.25} if (i + 1) % 2 == 0 else None)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    # the first step (speed early), every 2nd step, the last one
    assert [line.split(" (")[0] for line in lines] == [f"train distil {n}/6 steps" for n in (1, 2, 4, 6)]
    assert "loss=0.5 l1[w0.5]=0.25" in lines[1] and "s/step, ETA " in lines[1]
    assert "took" in lines[-1] and "ETA" not in lines[-1]


def test_time_based_lines_and_resumed_start(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="kdsr")
    clock = iter(range(0, 1000, 20))  # every call 20 s later
    monkeypatch.setattr("kdsr.progress.time.perf_counter", lambda: next(clock))
    bar = Progress(10, "eval", "image", every_s=30.0, initial=4, tty=False)
    for _ in range(6):
        bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("eval 5/10 images (50%)")  # counts on from where a resume starts
    assert len(lines) == 4 and lines[-1].startswith("eval 10/10 images")  # 1st, every >= 30 s, last
    assert "20 s/image, ETA 1m40s" in lines[0]


def test_tty_gets_a_bar_and_no_lines(caplog, capsys):
    caplog.set_level(logging.INFO, logger="kdsr")
    with Progress(3, "infer", "image", tty=True) as bar:
        for _ in range(3):
            bar.update(1)
    assert not caplog.records and "infer" in capsys.readouterr().err


def test_disabled_is_silent(caplog):
    caplog.set_level(logging.INFO, logger="kdsr")
    bar = Progress(3, "train x", enabled=False, tty=False)
    bar.update(3)
    assert not caplog.records and bar.done == 3


def test_evaluate_logs_images_done(caplog):
    import torch

    from kdsr.branches import Branch
    from kdsr.engine.evaluate import EvalSet, evaluate

    caplog.set_level(logging.INFO, logger="kdsr")
    g = torch.Generator().manual_seed(0)
    pairs = [(f"im{i}", torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g),
              torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g)) for i in range(3)]
    net = torch.nn.Upsample(scale_factor=2)
    evaluate({"up": Branch(net)}, [EvalSet("s", pairs)], {"l1": lambda sr, hr, s: float((sr - hr).abs().mean())}, 2, torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval ")]
    assert lines[0].startswith("eval 1/6 images") and lines[-1].startswith("eval 6/6 images")  # bicubic + up, 3 images


def test_eval_rate_counts_finished_images(caplog, monkeypatch):
    import torch

    from kdsr.branches import Branch
    from kdsr.engine.evaluate import EvalSet, evaluate

    clock = [0.0]
    monkeypatch.setattr("kdsr.progress.time.perf_counter", lambda: clock[0])

    class Slow(torch.nn.Module):  # each image takes 10 s of the fake clock
        def forward(self, x):
            clock[0] += 10.0
            return torch.nn.functional.interpolate(x, scale_factor=2)

    caplog.set_level(logging.INFO, logger="kdsr")
    pairs = [(f"im{i}", torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8)) for i in range(2)]
    evaluate({"slow": Branch(Slow())}, [EvalSet("s", pairs)], {"z": lambda sr, hr, s: 0.0}, 2, torch.device("cpu"), bicubic=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval ")]
    assert lines[0] == "eval 1/2 images (50%) | 10 s/image, ETA 10s"


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 59, 185, 7440)] == ["0s", "59s", "3m05s", "2h04m"]


def _kdsr_to_file(log: Path, *args: str) -> str:
    """The CLI with stdout and stderr redirected to a file, as under nohup / SLURM / CI."""
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "kdsr", *args], stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300
        )
    text = log.read_text()
    assert proc.returncode == 0, text
    return text


@pytest.mark.slow  # three CLI processes and a tiny run
def test_run_eval_infer_log_progress_when_redirected(tmp_path):
    cfg = tiny_config(tmp_path, steps=4)
    cfg["stages"] = cfg["stages"][:1]
    text = _kdsr_to_file(tmp_path / "run.log", "run", str(write_config(tmp_path / "c.yaml", cfg)))
    assert "\r" not in text  # no tqdm bar smeared into the file
    lines = [line for line in text.splitlines() if line.startswith("train teacher ")]
    assert [line.split(" (")[0] for line in lines] == ["train teacher 1/4 steps", "train teacher 2/4 steps", "train teacher 4/4 steps"]
    assert "loss=" in lines[1] and "s/step, ETA" in lines[1]
    assert any(line.startswith("eval 2/2 images") for line in text.splitlines())  # 2 eval images

    text = _kdsr_to_file(tmp_path / "eval.log", "eval", str(tmp_path / "run"))
    assert "eval 1/4 images" in text and "eval 4/4 images" in text

    images = make_image_folder(tmp_path / "lr", n=2, size=(20, 24))
    text = _kdsr_to_file(tmp_path / "infer.log", "infer", str(tmp_path / "run"), str(images), "--out", str(tmp_path / "sr"))
    assert "infer 1/2 images" in text and "infer 2/2 images" in text and "\r" not in text


def test_progress_values_show_each_term_only_when_there_are_several():
    from kdsr.engine.trainer import progress_values

    assert progress_values({"l1": 0.2, "loss": 0.2}) == {"loss": 0.2}
    assert progress_values({"l1": 0.1, "output_kd": 0.3, "loss": 0.4}) == {"loss": 0.4, "l1": 0.1, "output_kd": 0.3}
