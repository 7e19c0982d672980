"""How CPU tensors get their memory (``KDSR_ALLOCATOR``, read when kdsr is imported, before torch allocates).

* ``thp`` (default): ``THP_MEM_ALLOC_ENABLE=1``, PyTorch's own switch (read at its first allocation): blocks
  of 2 MiB and more on transparent huge pages. On the VMs measured here a page fault is costly, and fresh
  4 KB pages for every full-width activation dominated the memory-bound layers (EDSR-baseline x4 to 720p at
  full width 1.33-1.49x faster, bench/README.md). A THP_MEM_ALLOC_ENABLE already set is respected.
* ``reuse``: also glibc ``mallopt`` so freed activations are reused instead of handed back to the OS and
  faulted in again: blocks up to 32 MiB (glibc's largest mmap threshold) from the heap, freed heap memory
  kept (trim threshold 1 GiB). Page faults per forward fall from ~9,000 to 0 (EDSR-baseline, 720p output),
  but in alternating process pairs (``bench/allocator.py``) only tiled 4K inference got faster (1.16x);
  whole-image inference and training steps did not measurably, and a training process's peak RSS grew
  1.55 -> 2.28 GiB. Hence opt-in. Without glibc (musl, macOS) it is ``thp``.
* ``default``: neither; torch and libc as they are.

Effective only when kdsr is imported before torch allocates (the CLI, the bench scripts).
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit); larger values are refused
TRIM_THRESHOLD = 2**30

MODES = ("thp", "reuse", "default")

state: dict[str, object] = {"mode": None, "mallopt": False, "thp": None}


def configure() -> dict[str, object]:
    """Apply ``KDSR_ALLOCATOR`` (idempotent); returns what is in effect, for provenance."""
    mode = os.environ.get("KDSR_ALLOCATOR", "thp").lower()
    if mode not in MODES:
        warnings.warn(f"KDSR_ALLOCATOR={mode!r} is not one of {', '.join(MODES)}; using thp (unset it to silence this)", stacklevel=2)
        mode = "thp"
    state["mode"] = mode
    if mode != "default":
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    state["thp"] = os.environ.get("THP_MEM_ALLOC_ENABLE")
    if mode == "reuse" and not state["mallopt"] and sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):  # no glibc malloc to tune
            return state
        # Both: fixing either threshold stops glibc's adaptation of the other (trim alone -> every block mmapped).
        state["mallopt"] = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return state
