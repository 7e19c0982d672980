"""FSM, the frequency similarity matrix loss of HKDSR (official ``SimLoss``, methods.md 4.3).

For each high-frequency wavelet sub-band k of an SR output X (student S or teacher T) and of the HR
image G, flatten the sub-band to N x 3 (N = sub-band pixels, 3 = RGB) and form the N x N matrix of RGB
inner products ``M_X = W_k(X) W_k(G)^T``; the loss is ``sum_k mean |M_S - M_T|`` (mean over the batch
and all N^2 entries, as the official ``l1_loss`` on B x N x N).

N x N is large (N = 9216 for a 192 x 192 HR patch: 85 M entries per image and sub-band), but
``M_S - M_T = (W_k(S) - W_k(T)) W_k(G)^T``, so the L1 is summed over blocks of rows, each block
recomputed in the backward pass instead of stored (a small custom autograd function): memory stays at one
block whatever N is. The ``hkdsr`` loss can also restrict FSM to one random square of the HR patch
(``random_crop_box``; the official ``alladapt_model`` variant uses 96 x 96).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from kdsr_hkdsr.wavelet import DWT2

DEFAULT_BLOCK = 1 << 22  # elements of one row block of B x rows x N (16 MiB in float32)


def _flat(band: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x (h w) x C."""
    return band.flatten(2).transpose(1, 2)


class _BlockedAbsProductSum(torch.autograd.Function):
    """``sum |diff @ gt^T|`` over row blocks; the backward recomputes each block's product instead of
    keeping it (d|x|/dx = sign(x), as torch's ``abs``)."""

    @staticmethod
    def forward(ctx, diff: torch.Tensor, gt: torch.Tensor, rows: int) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(diff, gt)
        ctx.rows = rows
        gt_t = gt.transpose(1, 2)
        total = diff.new_zeros(())
        for start in range(0, diff.shape[1], rows):
            total += torch.matmul(diff[:, start : start + rows], gt_t).abs().sum()
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        diff, gt = ctx.saved_tensors
        want_diff, want_gt, _ = ctx.needs_input_grad
        grad_diff = torch.zeros_like(diff) if want_diff else None
        grad_gt = torch.zeros_like(gt) if want_gt else None
        gt_t = gt.transpose(1, 2)
        for start in range(0, diff.shape[1], ctx.rows):
            rows = diff[:, start : start + ctx.rows]
            sign = torch.matmul(rows, gt_t).sign_().mul_(grad)
            if grad_diff is not None:
                grad_diff[:, start : start + ctx.rows] = torch.matmul(sign, gt)
            if grad_gt is not None:
                grad_gt += torch.matmul(sign.transpose(1, 2), rows)
        return grad_diff, grad_gt, None


def blocked_l1_of_product(diff: torch.Tensor, gt: torch.Tensor, block_elements: int = DEFAULT_BLOCK) -> torch.Tensor:
    """``mean |diff @ gt^T|`` for diff B x N x C and gt B x M x C, never holding more than
    ``block_elements`` entries of the B x N x M product at once (also in the backward pass)."""
    b, n, _ = diff.shape
    m = gt.shape[1]
    rows = max(1, block_elements // max(1, b * m))
    return _BlockedAbsProductSum.apply(diff, gt, rows) / (b * n * m)


def dense_fsm(student: torch.Tensor, teacher: torch.Tensor, hr: torch.Tensor, dwt: DWT2) -> torch.Tensor:
    """The formula as written (both N x N matrices materialised): the reference for tests on small inputs."""
    loss = student.new_zeros(())
    for s, t, g in zip(dwt.high(student), dwt.high(teacher), dwt.high(hr)):
        g_t = _flat(g).transpose(1, 2)
        loss = loss + (torch.bmm(_flat(s), g_t) - torch.bmm(_flat(t), g_t)).abs().mean()
    return loss


def random_crop_box(height: int, width: int, size: int | None, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one random ``size`` square, the whole image when ``size`` is None or too big."""
    if size is None or (height <= size and width <= size):
        return 0, 0, height, width
    h, w = min(size, height), min(size, width)
    top = int(torch.randint(0, height - h + 1, (), generator=generator))
    left = int(torch.randint(0, width - w + 1, (), generator=generator))
    return top, left, h, w


class FSM:
    """Blocked FSM between student and teacher SR outputs, referenced to the HR image.

    The HR sub-bands can be computed once per step (``hr_bands``) and shared by every output.
    """

    def __init__(self, wavelet: str = "haar", mode: str = "zero", block_elements: int = DEFAULT_BLOCK) -> None:
        self.dwt = DWT2(wavelet, mode)
        self.block_elements = block_elements

    def hr_bands(self, hr: torch.Tensor) -> list[torch.Tensor]:
        """The HR image's high-frequency sub-bands, flattened to B x N x 3."""
        return [_flat(g) for g in self.dwt.high(hr)]

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, hr_bands: list[torch.Tensor]) -> torch.Tensor:
        loss = student.new_zeros(())
        for s, t, g in zip(self.dwt.high(student), self.dwt.high(teacher), hr_bands):
            loss = loss + blocked_l1_of_product(_flat(s) - _flat(t), g, self.block_elements)
        return loss
