"""Runtime backends for exported students: each checked against torch; a missing one is one line."""

from __future__ import annotations

import pytest
import torch

import kdsr.runtime as rt
from kdsr import Branch
from kdsr.cli import main
from kdsr.errors import KdsrError
from kdsr.plugins import registry
from kdsr.runtime import Runtime, check_runtime, prepare


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return registry("backbone").create("edsr_baseline", {"n_feats": 8, "n_resblocks": 1}, scale=2).eval()


def test_a_missing_backend_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(rt, "_importable", lambda module: module != "openvino")
    with pytest.raises(KdsrError, match=r"--backend openvino needs the 'openvino' package.*kdsr\[openvino\]"):
        check_runtime(Runtime(backend="openvino"))
    argv = ["profile", "--backbone", "edsr_baseline", "--scale", "2", "--hr-size", "16x16", "--latency", "--backend", "openvino"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'kdsr[openvino]'" in err


def test_unknown_backend_and_gpu_backends_are_refused():
    with pytest.raises(KdsrError, match="one of torch, onnxruntime, openvino"):
        Runtime(backend="tensorrt")
    with pytest.raises(KdsrError, match="runs on the CPU"):
        check_runtime(Runtime(backend="onnxruntime"), "cuda")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_matches_torch(backend):
    pytest.importorskip(backend)
    pytest.importorskip("onnxscript")
    model = tiny()
    runner = prepare(Branch(model), Runtime(backend=backend))
    x = torch.rand(1, 3, 17, 23, generator=torch.Generator().manual_seed(0))  # not the export's trace size
    with torch.no_grad():
        assert (runner(x) - model(x)).abs().max().item() <= 1e-4
    assert runner.max_diff <= rt.TOLERANCE["fp32"]


def test_infer_with_onnxruntime_writes_what_torch_writes(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import json

    from kdsr.data import read_image
    from kdsr.testing import make_image_folder
    from tests.conftest import tiny_config, write_config

    cfg = tiny_config(tmp_path, steps=2)
    cfg["stages"] = cfg["stages"][:1]
    assert main(["run", str(write_config(tmp_path / "c.yaml", cfg)), "--quiet"]) == 0
    lr = make_image_folder(tmp_path / "lr", n=1, size=(30, 26), seed=4)
    for backend in ("torch", "onnxruntime"):
        assert main(["infer", str(tmp_path / "run"), str(lr), "--out", str(tmp_path / backend), "--backend", backend]) == 0
    a, b = (read_image(next((tmp_path / d).glob("*.png"))).int() for d in ("torch", "onnxruntime"))
    assert (a - b).abs().max().item() <= 1
    assert json.loads((tmp_path / "onnxruntime" / "infer.json").read_text())["router"]["runtime"] == "onnxruntime fp32"
