"""Opt-in lower precision: bf16 only where the CPU computes it, int8 through onnxruntime's quantiser,
and the quality cost shown next to fp32."""

from __future__ import annotations

import pytest
import torch

import kdsr.runtime as rt
from kdsr import Branch
from kdsr.cli import main
from kdsr.errors import KdsrError
from kdsr.plugins import registry
from kdsr.runtime import Runtime, check_runtime, prepare, with_delta
from kdsr.testing import make_image_folder


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return registry("backbone").create("edsr_baseline", {"n_feats": 8, "n_resblocks": 2}, scale=2).eval()


def test_bf16_is_refused_in_one_line_without_amx(monkeypatch, capsys):
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: False)
    with pytest.raises(KdsrError, match="AMX or AVX512-BF16"):
        check_runtime(Runtime("bf16"))
    argv = ["profile", "--backbone", "edsr_baseline", "--scale", "2", "--option", "n_feats=8", "--option", "n_resblocks=1",
            "--hr-size", "16x16", "--latency", "--precision", "bf16"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--precision bf16" in err and "Traceback" not in err


def test_bf16_runs_under_autocast_where_supported(monkeypatch):
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: True)
    model = tiny()
    x = torch.rand(1, 3, 12, 12)
    y = prepare(Branch(model), Runtime("bf16"))(x)
    with torch.no_grad():
        ref = model(x)
    assert y.dtype == torch.float32 and 0 < (y - ref).abs().max().item() < 0.05  # bf16 rounding, not fp32


def test_cpu_bf16_detection_reads_the_flags(monkeypatch, tmp_path):
    rt.cpu_has_bf16.cache_clear()
    try:
        monkeypatch.setattr(rt.Path, "read_text", lambda self: "flags : fpu sse avx2 amx_bf16 amx_tile")
        assert rt.cpu_has_bf16()
        rt.cpu_has_bf16.cache_clear()
        monkeypatch.setattr(rt.Path, "read_text", lambda self: "flags : fpu sse avx2 avx512f")
        assert not rt.cpu_has_bf16()
    finally:
        rt.cpu_has_bf16.cache_clear()


def test_int8_needs_a_calibration_folder_and_an_onnx_backend():
    with pytest.raises(KdsrError, match="--calibration"):
        check_runtime(Runtime("int8"))
    with pytest.raises(KdsrError, match="--backend onnxruntime or openvino"):
        check_runtime(Runtime("int8", "torch", calibration="x"))
    with pytest.raises(KdsrError, match="one of fp32, bf16, int8"):
        Runtime("fp16")
    assert Runtime("int8").engine == "onnxruntime" and Runtime().engine == "torch"


def test_with_delta_lists_the_lowered_models_beside_fp32():
    ref = {"bicubic": {"s": {"psnr": 20.0}}, "m": {"s": {"psnr": 30.0, "ssim": 0.9}}}
    low = {"bicubic": {"s": {"psnr": 20.0}}, "m": {"s": {"psnr": 29.95, "ssim": 0.89}}}
    out = with_delta(ref, low, "int8")
    assert list(out) == ["bicubic", "m", "m [int8]"]
    assert out["m [int8]"]["s"]["psnr_delta"] == pytest.approx(-0.05)


def test_int8_is_calibrated_on_a_folder_and_close_to_fp32(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    make_image_folder(tmp_path / "cal", n=3, size=(40, 40), seed=1)
    model = tiny()
    runner = prepare(Branch(model), Runtime("int8", calibration=tmp_path / "cal"))
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x)
    diff = (runner(x) - ref).abs()
    assert 0 < diff.max().item() <= rt.TOLERANCE["int8"] and diff.mean().item() < 0.02


def test_eval_shows_the_psnr_delta_of_a_lower_precision(tmp_path, monkeypatch, capsys):
    import json

    from tests.conftest import tiny_config, write_config

    cfg = tiny_config(tmp_path, steps=2)
    cfg["stages"] = cfg["stages"][:1]
    assert main(["run", str(write_config(tmp_path / "c.yaml", cfg)), "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: True)  # autocast runs on any CPU, only slower
    assert main(["eval", str(tmp_path / "run"), "--precision", "bf16", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert {"teacher", "teacher [bf16]"} <= set(results)
    row = results["teacher [bf16]"]["val"]
    assert row["psnr_delta"] == pytest.approx(row["psnr"] - results["teacher"]["val"]["psnr"])


def test_int8_is_checked_on_a_calibration_image_not_on_noise(tmp_path):
    """int8's ranges hold for images like its calibration folder: the check probes with one of them."""
    make_image_folder(tmp_path / "cal", n=2, size=(40, 52), seed=3)
    probe = rt.check_probe(Runtime("int8", "onnxruntime", tmp_path / "cal"))
    first = torch.from_numpy(rt.calibration_inputs(tmp_path / "cal", limit=1)[0])
    assert torch.equal(probe, first)
    assert rt.check_probe(Runtime()).shape == rt.CHECK_SIZE  # other runtimes: the random probe
