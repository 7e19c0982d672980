"""Image IO, image sources, LR/HR pairs and the deterministic patch sampler."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import kdsr.builtin.datasets
import kdsr.builtin.degradations
from kdsr.data import (
    ImageFolder,
    PairedFolders,
    Sample,
    SkimageSamples,
    SRPairs,
    TrainPatches,
    bicubic_downscale,
    list_images,
    mod_crop,
    quantize,
    read_image,
    to_float,
    write_image,
)
from kdsr.errors import KdsrError
from kdsr.plugins import Plugins


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# --- read_image / write_image -------------------------------------------------------------------


def test_read_rgb_and_grayscale(tmp_path: Path) -> None:
    rgb = _rgb(5, 7)
    out = read_image(_save(tmp_path / "a.png", rgb))
    assert out.dtype == torch.uint8 and out.shape == (3, 5, 7)
    assert torch.equal(out, torch.from_numpy(rgb).permute(2, 0, 1))
    gray = rgb[..., 0]
    g = read_image(_save(tmp_path / "g.png", gray))
    assert g.shape == (3, 5, 7) and all(torch.equal(g[c], torch.from_numpy(gray)) for c in range(3))


def test_read_palette_and_opaque_alpha(tmp_path: Path) -> None:
    rgb = _rgb(6, 4)
    pal = Image.fromarray(rgb).quantize(colors=8)
    pal.save(tmp_path / "p.png")
    expect = torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(read_image(tmp_path / "p.png"), expect)
    rgba = np.concatenate([rgb, np.full((6, 4, 1), 255, np.uint8)], axis=2)
    assert torch.equal(read_image(_save(tmp_path / "o.png", rgba)), torch.from_numpy(rgb).permute(2, 0, 1))
    la = Image.fromarray(rgb[..., 0]).convert("LA")
    la.save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").shape == (3, 6, 4)


def test_transparency_is_rejected(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(4, 4), np.full((4, 4, 1), 255, np.uint8)], axis=2)
    rgba[1, 2, 3] = 0
    with pytest.raises(KdsrError, match=r"'t.png' has transparency; flatten it"):
        read_image(_save(tmp_path / "t.png", rgba))


def test_sixteen_bit_is_rounded(tmp_path: Path) -> None:
    a = np.array([[0, 257, 65535, 1000, 128]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out[0, 0].tolist() == [0, 1, 255, 4, 0]  # 1000/257 = 3.89, 128/257 = 0.498
    i32 = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    assert i32.mode == "I"
    i32.save(tmp_path / "i.tif")
    assert read_image(tmp_path / "i.tif")[1, 0].tolist() == [0, 100, 255]  # 8-bit range kept as is


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    _save(tmp_path / "full.png", _rgb(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(KdsrError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(KdsrError, match="notes.png"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(KdsrError, match="missing.png.*does not exist"):
        read_image(tmp_path / "missing.png")


def test_write_quantises_and_creates_dirs(tmp_path: Path) -> None:
    x = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    write_image(tmp_path / "sub" / "x.png", x)
    back = to_float(read_image(tmp_path / "sub" / "x.png"))
    assert torch.equal(back, quantize(x))
    u8 = torch.from_numpy(_rgb(4, 4)).permute(2, 0, 1)
    write_image(tmp_path / "u.png", u8)
    assert torch.equal(read_image(tmp_path / "u.png"), u8)


def test_list_images(tmp_path: Path) -> None:
    with pytest.raises(KdsrError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(KdsrError, match="has no images"):
        list_images(tmp_path)
    for name in ("b.PNG", "a.jpg", ".hidden.png"):
        _save(tmp_path / name, _rgb(2, 2))
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]


# --- sources ------------------------------------------------------------------------------------


def test_image_folder_is_lazy_and_limited(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / f"im{i}.png", _rgb(4, 4, i))
    src = ImageFolder(tmp_path, limit=2)
    assert len(src) == 2 and [s.name for s in src] == ["im0", "im1"]
    (tmp_path / "im1.png").write_text("broken after listing")
    with pytest.raises(KdsrError, match="im1.png"):
        src[1]


def test_paired_folders_match_by_stem(tmp_path: Path) -> None:
    for name in ("0001", "0002"):
        _save(tmp_path / "hr" / f"{name}.png", _rgb(8, 8))
        _save(tmp_path / "lr" / f"{name}x2.png", _rgb(4, 4))
    src = PairedFolders(tmp_path / "hr", tmp_path / "lr")
    assert [s.name for s in src] == ["0001", "0002"] and src[0].lr.shape == (3, 4, 4)
    _save(tmp_path / "hr" / "0003.png", _rgb(8, 8))
    with pytest.raises(KdsrError, match=r"1 HR images .* no LR .*0003.png"):
        PairedFolders(tmp_path / "hr", tmp_path / "lr")
    _save(tmp_path / "lr" / "0003.png", _rgb(4, 4))
    _save(tmp_path / "lr" / "zzz.png", _rgb(4, 4))
    with pytest.raises(KdsrError, match=r"zzz.png"):
        PairedFolders(tmp_path / "hr", tmp_path / "lr")


def test_skimage_samples_are_rgb_uint8() -> None:
    src = SkimageSamples(["chelsea", "coffee"])
    for s in src:
        assert s.hr.dtype == torch.uint8 and s.hr.dim() == 3 and s.hr.shape[0] == 3 and s.lr is None
    assert len(SkimageSamples()) >= 4
    with pytest.raises(KdsrError, match="did you mean 'coffee'"):
        SkimageSamples(["cofee"])


def test_builtin_plugins_register(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", _rgb(4, 4))
    plugins = Plugins()
    for module, name in ((kdsr.builtin.datasets, "datasets"), (kdsr.builtin.degradations, "degradations")):
        assert plugins.add(module, name, builtin=True).ok
    folder = plugins.registry("dataset").create("folder", {"root": str(tmp_path)})
    assert len(folder) == 1
    assert set(plugins.registry("dataset").names()) == {"folder", "paired", "samples"}
    degrade = plugins.registry("degradation").create("bicubic")
    assert degrade(torch.rand(3, 8, 12), 4).shape == (3, 2, 3)


# --- pairs and patches --------------------------------------------------------------------------


def _sample(name: str, h: int, w: int, seed: int = 0) -> Sample:
    return Sample(name, torch.from_numpy(_rgb(h, w, seed)).permute(2, 0, 1).contiguous())


def test_mod_crop() -> None:
    assert mod_crop(torch.zeros(3, 10, 13), 4).shape == (3, 8, 12)


def test_srpairs_bicubic_lr(tmp_path: Path) -> None:
    pairs = SRPairs([_sample("a", 10, 13)], scale=3)
    name, lr, hr = pairs[0]
    assert name == "a" and hr.shape == (3, 9, 12) and lr.shape == (3, 3, 4) and lr.dtype == torch.uint8
    expect = to_float(bicubic_downscale(hr, 3))  # MATLAB on the uint8 HR
    assert torch.equal(to_float(lr), expect)
    assert pairs[0][1] is lr  # cached


def test_srpairs_checks_given_lr_size() -> None:
    bad = Sample("img7", torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 3, 4, dtype=torch.uint8))
    with pytest.raises(KdsrError, match=r"image 'img7': LR is 4x3 but HR 8x8 .* needs 4x4"):
        SRPairs([bad], scale=2)[0]


def _nearest(hr: torch.Tensor, s: int) -> torch.Tensor:
    return hr[:, ::s, ::s]


def _box(hr: torch.Tensor, s: int) -> torch.Tensor:
    return F.avg_pool2d(hr[None], s)[0]


def test_patches_are_deterministic_per_step_and_rank() -> None:
    src = [_sample(f"i{k}", 40, 48, k) for k in range(3)]
    pairs = SRPairs(src, scale=2)
    a = TrainPatches(pairs, patch_size=8, batch_size=4, seed=5)
    lr, hr = a.batch(7)
    assert lr.shape == (4, 3, 8, 8) and hr.shape == (4, 3, 16, 16) and lr.dtype == torch.float32
    torch.manual_seed(123)  # the global RNG must not matter
    again = TrainPatches(pairs, patch_size=8, batch_size=4, seed=5).batch(7)
    assert torch.equal(lr, again[0]) and torch.equal(hr, again[1])
    assert not torch.equal(lr, a.batch(8)[0])
    other = TrainPatches(pairs, patch_size=8, batch_size=4, seed=5, rank=1, world_size=2).batch(7)
    first = TrainPatches(pairs, patch_size=8, batch_size=4, seed=5, rank=0, world_size=2).batch(7)
    assert not torch.equal(other[0], first[0])


def test_patches_are_aligned_without_augmentation() -> None:
    pairs = SRPairs([_sample("a", 36, 30, 1), _sample("b", 27, 45, 2)], scale=3, degrade=_nearest)
    lr, hr = TrainPatches(pairs, patch_size=5, batch_size=16, seed=0, augment=False).batch(0)
    assert torch.equal(lr, hr[..., ::3, ::3])


def test_patches_are_aligned_after_augmentation() -> None:
    # a box filter commutes with flips/transposes of whole blocks, so aligned patches must agree
    pairs = SRPairs([_sample("a", 40, 32, 3)], scale=4, degrade=_box)
    lr, hr = TrainPatches(pairs, patch_size=6, batch_size=32, seed=1).batch(3)
    assert (lr - F.avg_pool2d(hr, 4)).abs().max() <= 0.51 / 255
    assert not torch.equal(lr, hr[..., ::4, ::4])  # random noise: misalignment would be far off


def test_small_images_are_left_out() -> None:
    pairs = SRPairs([_sample("big", 40, 40), _sample("tiny", 12, 40)], scale=2)
    with pytest.warns(UserWarning, match="1 of 2 training images are smaller than the LR patch"):
        tp = TrainPatches(pairs, patch_size=8, batch_size=2, seed=0)
    assert tp.indices == [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KdsrError, match=r"every training image is smaller than the LR patch \(32 px\)"):
            TrainPatches(pairs, patch_size=32, batch_size=2, seed=0)
