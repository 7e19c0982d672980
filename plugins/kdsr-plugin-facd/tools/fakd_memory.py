"""Peak memory (RSS) and time of FAKD's affinity term, forward + backward, on CPU.

    python plugins/kdsr-plugin-facd/tools/fakd_memory.py --chunk 1          # kdsr's chunked, checkpointed term
    python plugins/kdsr-plugin-facd/tools/fakd_memory.py --naive            # whole-batch affinities kept by autograd

Default size: a batch of 16 LR patches of 48x48, 64-channel features at 3 taps (FAKD's training setting).
Run one setting per process: RSS peaks cannot be reset.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from kdsr_facd.fakd import affinity_l1, spatial_affinity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=48, help="LR patch side = feature map side")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=1, help="images_per_chunk")
    ap.add_argument("--naive", action="store_true", help="F.l1_loss on whole-batch affinity matrices instead")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.channels, args.size, args.size)
    student = [torch.randn(shape, generator=g, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(shape, generator=g) for _ in range(3)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if args.naive:
        loss = sum(F.l1_loss(spatial_affinity(s), spatial_affinity(t)) for s, t in zip(student, teacher))
    else:
        loss = sum(affinity_l1(s, t, images_per_chunk=args.chunk) for s, t in zip(student, teacher))
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mode = "naive" if args.naive else f"images_per_chunk={args.chunk}"
    print(f"{mode}: {shape} x 3 taps: peak RSS {peak:.0f} MiB, {peak - before:.0f} MiB above the inputs ({before:.0f} MiB); fwd+bwd {seconds:.1f} s")


if __name__ == "__main__":
    main()
