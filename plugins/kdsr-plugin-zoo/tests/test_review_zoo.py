"""Review findings on the zoo (issue 15): SwinIR pads like ``main_test_swinir.py`` also on
window-aligned inputs (15.6); a CARN-M file given to ``carn`` names ``carn_m`` (15.15)."""

from __future__ import annotations

import pytest
import torch

from kdsr import KdsrError
from kdsr.cli import main
from kdsr.weights import load_weights
from kdsr_zoo import carn as C
from kdsr_zoo import swinir as sw

TINY = {"embed_dim": 12, "depths": (2, 2), "num_heads": (2, 2), "window_size": 4, "drop_path_rate": 0.0}


def script_padded(model: torch.nn.Module, lr: torch.Tensor, window: int, scale: int) -> torch.Tensor:
    """``main_test_swinir.py``, ``process_img``: pad by ``(h // window + 1) * window - h`` with
    ``cat([x, flip(x)])`` on each axis, run the network on that (already aligned) input, crop."""
    _, _, h, w = lr.shape
    h_pad, w_pad = (h // window + 1) * window - h, (w // window + 1) * window - w
    x = torch.cat([lr, torch.flip(lr, [2])], 2)[:, :, : h + h_pad, :]
    x = torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, : w + w_pad]
    model.train()  # training mode pads only unaligned inputs: this one is aligned, so it runs as given
    try:
        with torch.no_grad():
            return model(x)[..., : h * scale, : w * scale]
    finally:
        model.eval()


@pytest.mark.parametrize("size", [(16, 24), (17, 23)])
@pytest.mark.parametrize("factory", [sw.swinir, sw.swinir_light])
def test_swinir_eval_pads_as_the_published_test_script(factory, size) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = factory(2, **TINY).eval()
    lr = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(lr)
    torch.testing.assert_close(got, script_padded(model, lr, 4, 2), rtol=1e-5, atol=1e-6)
    if size[0] % 4 == 0:  # aligned: the script's full extra window is not "the last digits"
        with torch.no_grad():
            unpadded = model.train()(lr)
        assert (got - unpadded).abs().max() > 1e-3


def _carn_m_file(tmp_path):
    path = tmp_path / "mobile.pth"
    torch.save(C.carn_m(2, n_feats=16).state_dict(), path)
    return path


def test_carn_m_weights_given_to_carn_name_carn_m(tmp_path, capsys) -> None:
    with pytest.raises(KdsrError, match="use backbone 'carn_m'"):
        load_weights(C.carn(2, n_feats=16), _carn_m_file(tmp_path), C.load_official)
    out = tmp_path / "x.safetensors"
    argv = ["convert", str(_carn_m_file(tmp_path)), str(out), "--backbone", "carn", "--scale", "2", "--option", "n_feats=16"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "use backbone 'carn_m'" in err and "width/depth" not in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_carn_weights_given_to_carn_m_name_carn(tmp_path) -> None:
    path = tmp_path / "carn.pth"
    torch.save(C.carn(2, n_feats=16).state_dict(), path)
    with pytest.raises(KdsrError, match="use backbone 'carn'"):
        load_weights(C.carn_m(2, n_feats=16), path, C.load_official)
