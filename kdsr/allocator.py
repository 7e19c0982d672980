"""How CPU tensors get their memory (``KDSR_ALLOCATOR``, read when kdsr is imported, before torch allocates).

* ``reuse`` (default): ``THP_MEM_ALLOC_ENABLE=1``, PyTorch's own switch (read at its first allocation), so
  blocks of 2 MiB and more sit on transparent huge pages, and glibc ``mallopt`` so freed activations are
  reused instead of handed back to the OS and faulted in again: blocks up to 32 MiB (glibc's largest mmap
  threshold) from the heap, freed heap memory kept (trim threshold 1 GiB). On the VMs measured here a page
  fault is costly: page faults per forward fall from ~8,800 to ~140 (EDSR-baseline x4 to 720p), and in
  alternating process pairs (``bench/allocator.py``, 3 pairs at c4b2c8f) 720p inference at 64 channels ran
  1.03x, tiled 4K 1.09x and 64-channel training steps 1.07x faster than under ``thp``, 16-channel inference,
  single 52 px windows and training steps within 2% (0.99-1.02x); peak RSS 0.98 vs 0.89 GiB after
  inference, 2.27 vs 2.23 GiB after training (the run at 6c541d8: 1.06x / 1.15x / 1.21x, 16 channels
  0.89-1.01x). Routed small images gain most: a conv whose 3 MB output glibc's defaults hand back and map
  afresh took 4.7-5.4 ms a pass against 2.4 ms reused (a 32-channel branch on a 40 px window), and the dynamic
  bench's time fractions came within 0.1 of their Multi-Adds at 51 and 52 of 54 policies in two runs
  against 47 (bench/README.md). Without glibc (musl, macOS) it is ``thp``.
* ``thp``: the huge pages only, glibc's malloc defaults (kdsr's default until the dynamic bench above):
  against ``default``, fresh 4 KB pages for every full-width activation had dominated the memory-bound
  layers (EDSR-baseline x4 to 720p at full width 1.33-1.49x faster with huge pages, bench/README.md).
* ``default``: neither; torch and libc as they are.

A THP_MEM_ALLOC_ENABLE already set is respected. Effective only when kdsr is imported before torch
allocates (the CLI, the bench scripts).
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
DEFAULT = "reuse"

state: dict[str, object] = {"mode": None, "mallopt": False, "thp": None}


def configure() -> dict[str, object]:
    """Apply ``KDSR_ALLOCATOR`` (idempotent); returns what is in effect, for provenance."""
    mode = os.environ.get("KDSR_ALLOCATOR", DEFAULT).lower()
    if mode not in MODES:
        warnings.warn(f"KDSR_ALLOCATOR={mode!r} is not one of {', '.join(MODES)}; using {DEFAULT} (unset it to silence this)", stacklevel=2)
        mode = DEFAULT
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
