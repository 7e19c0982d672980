"""What lifecycle hooks see of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdsr.config import RunConfig


@dataclass
class RunContext:
    """The run as plugins see it: config, run directory, device, and the current stage."""

    config: RunConfig
    run_dir: Path
    device: torch.device
    stage: Any = None  # kdsr.engine.build.Stage while a stage runs
    rank: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # free space for plugins
