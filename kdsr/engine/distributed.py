"""Data-parallel training under ``torchrun``.

Gradients are averaged with one all-reduce per step after ``backward`` rather than through
``DistributedDataParallel``: a distillation step runs several forwards of one weight-shared
network (CSD widths) and trains loss parameters (adaptors, gates), which DDP's reducer
handles only with ``static_graph``/``find_unused_parameters`` caveats. One flat all-reduce
is simple, exact and works for every method.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) when not launched by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(device: torch.device) -> None:
    """Join the process group when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_parameters(tensors: Iterable[torch.Tensor]) -> None:
    """Make every rank start from rank 0's weights."""
    if world()[1] == 1:
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of ``params`` in one flat buffer."""
    size = world()[1]
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def mean_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged scalars over ranks (every rank must call it)."""
    if world()[1] == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= world()[1]
    return dict(zip(values, t.tolist()))
