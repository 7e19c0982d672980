"""Blocked FSM equals the dense formula (value and gradient); its memory on a 192x192 patch is bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from hkdsr_testing import one_thread  # noqa: F401 - fixture
from kdsr_hkdsr.fsm import FSM, blocked_l1_of_product, dense_fsm, random_crop_box

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(seed: int = 0, size: tuple[int, int] = (12, 10)) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    s, t, hr = (torch.rand(2, 3, *size, generator=g, dtype=torch.float64) for _ in range(3))
    return s.requires_grad_(), t, hr


@pytest.mark.parametrize("block", [1, 7, 30, 1 << 20])
def test_blocked_fsm_equals_dense(block: int) -> None:
    s, t, hr = _inputs()
    fsm = FSM(block_elements=block)
    blocked = fsm(s, t, fsm.hr_bands(hr))
    dense = dense_fsm(s, t, hr, fsm.dwt)
    torch.testing.assert_close(blocked, dense)
    (g_blocked,) = torch.autograd.grad(blocked, s)
    (g_dense,) = torch.autograd.grad(dense, s)
    torch.testing.assert_close(g_blocked, g_dense)


def test_fsm_is_zero_for_identical_outputs_and_grows_with_difference() -> None:
    s, t, hr = _inputs()
    fsm = FSM()
    bands = fsm.hr_bands(hr)
    s = s.detach()
    assert float(fsm(t, t, bands)) == 0.0
    assert float(fsm(t + 0.1 * (s - t), t, bands)) < float(fsm(s, t, bands))


def test_blocked_product_gradcheck() -> None:
    d = torch.rand(2, 9, 3, dtype=torch.float64, requires_grad=True) - 0.5
    g = torch.rand(2, 8, 3, dtype=torch.float64, requires_grad=True) - 0.5
    assert torch.autograd.gradcheck(lambda a, b: blocked_l1_of_product(a, b, block_elements=10), (d, g))


def test_random_crop_box() -> None:
    gen = torch.Generator().manual_seed(0)
    assert random_crop_box(40, 50, None) == (0, 0, 40, 50)
    assert random_crop_box(40, 50, 64) == (0, 0, 40, 50)
    for _ in range(20):
        top, left, h, w = random_crop_box(40, 50, 16, gen)
        assert (h, w) == (16, 16) and 0 <= top <= 24 and 0 <= left <= 34


_MEASURE = textwrap.dedent(
    """
    import json, re, sys, torch
    from kdsr_hkdsr.fsm import FSM, dense_fsm

    def status(key):  # MiB
        return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

    torch.set_num_threads(1)
    s = torch.rand(1, 3, 192, 192, requires_grad=True)
    t, hr = torch.rand(1, 3, 192, 192), torch.rand(1, 3, 192, 192)
    fsm = FSM()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    loss = fsm(s, t, fsm.hr_bands(hr)) if sys.argv[1] == "blocked" else dense_fsm(s, t, hr, fsm.dwt)
    loss.backward()
    print(json.dumps({"before_mib": before, "peak_mib": status("VmHWM")}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_fsm_peak_memory_on_192_patch_is_small() -> None:
    """Peak RSS during forward + backward of FSM for one output on a 192x192 HR patch (N = 9216; the dense
    student and teacher matrices alone would be 3 x 2 x 85 M floats, 2 GB), in a fresh process: the
    kernel's peak-RSS counter (VmHWM, torch allocations included) is reset right before the FSM."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, "blocked"], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout)
    extra = m["peak_mib"] - m["before_mib"]
    print(f"FSM 192x192 forward+backward: +{extra:.0f} MiB over the {m['before_mib']:.0f} MiB process, peak {m['peak_mib']:.0f} MiB")
    assert extra < 256
