"""The public Python API as a user calls it: ``kdsr.load`` and ``kdsr.upscale`` (plus the CLI to train and
export), nothing internal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdsr
from kdsr.cli import main
from tests.test_standalone import independent_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = independent_run(tmp_path_factory.mktemp("api"))
    assert main(["export", str(run), "--out", str(run.parent / "model.safetensors")]) == 0
    return run


def test_load_a_run_and_its_export_give_one_network(run):
    a, b = kdsr.load(run), kdsr.load(run.parent / "model.safetensors")
    assert isinstance(a, torch.nn.Module) and not a.training and not b.training
    x = torch.rand(1, 3, 9, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        assert a(x).shape == (1, 3, 18, 28)
    assert torch.equal(kdsr.load(run, branch="student", stage="edsr")(x), a(x))


def test_load_errors_are_kdsr_errors(run):
    with pytest.raises(kdsr.KdsrError, match="no trained branch 'w0.5'"):
        kdsr.load(run, branch="w0.5")
    with pytest.raises(kdsr.KdsrError, match="backbone"):
        kdsr.load(run.parent / "model.safetensors", backbone="rcan")


def test_upscale_returns_the_kind_it_was_given(run, tmp_path):
    model = kdsr.load(run.parent / "model.safetensors")
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)
    path = tmp_path / "lr.png"
    Image.fromarray(arr).save(path)

    out = kdsr.upscale(model, arr, tile=None)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (20, 26, 3)
    x = torch.from_numpy(arr).permute(2, 0, 1).float().div(255)
    with torch.no_grad():
        ref = model(x[None])[0].clamp(0, 1)
    assert np.array_equal(out, ref.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())

    pil = kdsr.upscale(model, Image.fromarray(arr), tile=None)
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), out)
    assert np.array_equal(np.asarray(kdsr.upscale(model, path, tile=None)), out)  # a path gives a PIL image

    t = kdsr.upscale(model, x, tile=None)  # 8-bit values, as kdsr infer writes them
    assert t.shape == (3, 20, 26) and t.dtype == torch.float32
    assert torch.equal(t, torch.from_numpy(out).permute(2, 0, 1).float() / 255)
    t4 = kdsr.upscale(model, torch.from_numpy(arr).permute(2, 0, 1)[None], tile=None)
    assert t4.shape == (1, 3, 20, 26) and t4.dtype == torch.uint8 and np.array_equal(t4[0].permute(1, 2, 0).numpy(), out)


def test_upscale_tiles_exactly_with_enough_overlap(run):
    model = kdsr.load(run)
    x = torch.rand(3, 21, 17, generator=torch.Generator().manual_seed(1))
    whole = kdsr.upscale(model, x, tile=None)
    assert torch.allclose(kdsr.upscale(model, x, tile=6, overlap=12, batch=2), whole, atol=1e-6)
    assert not torch.allclose(kdsr.upscale(model, x, tile=6, overlap=0), whole, atol=1e-6)
    with pytest.raises(kdsr.KdsrError, match="numpy image must be uint8"):
        kdsr.upscale(model, np.zeros((4, 4, 3), np.float32))
