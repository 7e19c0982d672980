"""The HKDSR loss is the official sum of terms, with the teacher blend and trainable ACF gates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hkdsr_testing import one_thread  # noqa: F401 - fixture
from kdsr import Batch, Needs, Outputs
from kdsr_hkdsr.fsm import dense_fsm
from kdsr_hkdsr.losses import hkdsr

pytestmark = pytest.mark.usefixtures("one_thread")
TAPS = ("heads.0", "heads.1")


def _outputs(seed: int, grad: bool = False) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(2, 3, 12, 10, generator=g, dtype=torch.float64).requires_grad_(grad) for _ in range(3)]
    return Outputs(imgs[2], {TAPS[0]: imgs[0], TAPS[1]: imgs[1]})


def test_needs_the_teacher_and_the_head_taps() -> None:
    assert hkdsr().needs == Needs(teacher=True, student_taps=TAPS, teacher_taps=TAPS)


def test_loss_is_the_official_weighted_sum() -> None:
    torch.manual_seed(0)
    loss_fn = hkdsr().double()
    s, t = _outputs(1), _outputs(2)
    hr = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    value = loss_fn(s, t, Batch(torch.empty(0), hr))
    dwt = loss_fn.fsm.dwt
    mids = [0.6 * t.taps[k] + 0.4 * t.sr for k in TAPS]
    expected = F.l1_loss(s.sr, hr)
    for i, k in enumerate(TAPS):
        expected = expected + 0.8 * dense_fsm(s.taps[k], mids[i], hr, dwt) + 0.5 * loss_fn.acf[i](s.taps[k], mids[i], hr)
    expected = expected + 3.2 * dense_fsm(s.sr, t.sr, hr, dwt) + 1.0 * loss_fn.acf[2](s.sr, t.sr, hr)
    torch.testing.assert_close(value, expected)


def test_weights_and_blend_are_options() -> None:
    s, t = _outputs(1), _outputs(2)
    hr = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    only_l1 = hkdsr(w_fsm_mid=0, w_acf_mid=0, w_fsm_final=0, w_acf_final=0).double()
    torch.testing.assert_close(only_l1(s, t, Batch(hr, hr)), F.l1_loss(s.sr, hr))
    # blend 1: the teacher's intermediate outputs as they are
    mid_fsm = hkdsr(w_l1=0, w_acf_mid=0, w_fsm_final=0, w_acf_final=0, teacher_blend=1.0).double()
    dwt = mid_fsm.fsm.dwt
    expected = sum(0.8 * dense_fsm(s.taps[k], t.taps[k], hr, dwt) for k in TAPS)
    torch.testing.assert_close(mid_fsm(s, t, Batch(hr, hr)), expected)
    with pytest.raises(ValueError, match="teacher_blend"):
        hkdsr(teacher_blend=1.5)


def test_fsm_crop_uses_one_box_for_student_teacher_and_hr() -> None:
    s, t = _outputs(1), _outputs(2)
    hr = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    loss_fn = hkdsr(w_l1=0, w_fsm_mid=0, w_acf_mid=0, w_acf_final=0, fsm_crop=6).double()
    torch.manual_seed(3)
    value = loss_fn(s, t, Batch(hr, hr))
    torch.manual_seed(3)
    top, left = int(torch.randint(0, 7, ())), int(torch.randint(0, 5, ()))
    box = (..., slice(top, top + 6), slice(left, left + 6))
    torch.testing.assert_close(value, 3.2 * dense_fsm(s.sr[box], t.sr[box], hr[box], loss_fn.fsm.dwt))


def test_gradients_reach_the_student_outputs_and_every_acf_gate() -> None:
    torch.manual_seed(0)
    loss_fn = hkdsr().double()
    s, t = _outputs(1, grad=True), _outputs(2)
    hr = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    loss_fn(s, t, Batch(hr, hr)).backward()
    for x in (s.sr, *s.taps.values()):
        assert x.grad is not None and x.grad.abs().sum() > 0
    assert len(list(loss_fn.parameters())) == 3 * 3 * 4  # 3 outputs x 3 channel gates x (2 convs w + b)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss_fn.parameters())
