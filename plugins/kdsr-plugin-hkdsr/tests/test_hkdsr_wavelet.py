"""The torch DWT equals pywt.dwt2 sub-band by sub-band and has correct gradients."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from hkdsr_testing import one_thread  # noqa: F401 - fixture
from kdsr_hkdsr.wavelet import DWT2, MODES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4", "bior2.2"])
@pytest.mark.parametrize("mode", MODES)
def test_dwt_equals_pywt(wavelet: str, mode: str) -> None:
    rng = np.random.default_rng(0)
    for size in [(8, 8), (9, 7), (16, 11)]:
        x = rng.standard_normal((2, 3, *size))
        ll, (lh, hl, hh) = DWT2(wavelet, mode)(torch.from_numpy(x))
        ca, (ch, cv, cd) = pywt.dwt2(x, wavelet, mode=mode)
        for ours, ref in zip((ll, lh, hl, hh), (ca, ch, cv, cd)):
            assert ours.shape == ref.shape
            assert np.abs(ours.numpy() - ref).max() <= 1e-6


def test_haar_zero_is_the_official_default() -> None:
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    lh = DWT2().high(x)[0]
    # cH of Haar: (top - bottom rows) of each 2x2 block, summed over columns, / 2
    expected = (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] - x[..., 1::2, 0::2] - x[..., 1::2, 1::2]) / 2
    torch.testing.assert_close(lh, expected)


@pytest.mark.parametrize("wavelet,mode", [("haar", "zero"), ("db2", "symmetric"), ("db2", "periodic")])
def test_dwt_gradcheck(wavelet: str, mode: str) -> None:
    dwt = DWT2(wavelet, mode)
    x = torch.rand(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.cat([b.flatten() for b in (dwt(t)[0], *dwt.high(t))]), (x,))


def test_unknown_wavelet_or_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="PyWavelets"):
        DWT2("nope")
    with pytest.raises(ValueError, match="mode"):
        DWT2("haar", "smooth")
