"""Shared pieces of the engine-robustness tests: a one-stage tiny config and in-process plugins."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kdsr.cli import main
from kdsr.plugins import PluginInfo, get_plugins, reset_plugins
from tests.conftest import tiny_config, write_config


def one_stage(tmp_path: Path, steps: int = 4, **stage) -> Path:
    """A config file training one tiny stage; ``stage`` overrides its keys."""
    cfg = tiny_config(tmp_path, steps=steps, threads=1)
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0].update(stage)
    return write_config(tmp_path / "c.yaml", cfg)


@contextlib.contextmanager
def extra_plugin(obj: object, name: str) -> Iterator[PluginInfo]:
    """The process-wide plugin set plus ``obj`` registered as plugin ``name``, for the CLI run in-process."""
    reset_plugins()
    try:
        yield get_plugins().add(obj, name, "0.1")
    finally:
        reset_plugins()


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run the CLI in-process; it must exit 2 with one line holding every needle."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    line = err.splitlines()[-1]
    assert line.startswith("kdsr: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in line, line
    return line


def latest_step(folder: Path) -> int:
    """The step ``latest.json`` names, after checking that both its files load and are finite."""
    import torch

    info = json.loads((folder / "latest.json").read_text())
    weights = load_file(folder / info["weights"])
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())
    torch.load(folder / info["state"], weights_only=True)
    return int(info["step"])
