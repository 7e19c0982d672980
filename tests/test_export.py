"""`kdsr export`: a trained branch leaves its run as a plain network (safetensors, ONNX, TorchScript).

Must show: a tiny CSSR run exported at w0.5 gives the branch's output (max |diff| <= 1e-6, fp32) for every
zoo CNN; ONNX equals torch within 1e-4 under onnxruntime; a bad --branch / --stage / format writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdsr.cli import main
from kdsr.plugins import registry
from tests.conftest import tiny_config, write_config

# tiny widths for which w0.5 still builds each zoo CNN (IMDN's channel attention needs nf >= 16 at w0.5)
ZOO = {
    "edsr_baseline": {"n_feats": 8, "n_resblocks": 1},
    "rcan": {"n_feats": 8, "n_resgroups": 1, "n_resblocks": 1, "reduction": 2},
    "carn": {"n_feats": 8},
    "imdn": {"nf": 32, "num_modules": 1},
    "csd_carn": {"n_feats": 8},
}


def cssr_stage(backbone: str) -> dict:
    return {
        "name": backbone.replace("_", "-"),
        "steps": 1,
        "student": {"constructor": "cssr", "options": {"backbone": backbone, "options": ZOO[backbone], "widths": [1.0, 0.5]}},
        "losses": [{"name": "l1", "student": "w1.0"}, {"name": "l1", "student": "w0.5"}],
    }


@pytest.fixture(scope="module")
def cssr_run(tmp_path_factory) -> Path:
    """One tiny run, one CSSR stage per zoo CNN (one step each: the weights only need to be non-initial)."""
    tmp = tmp_path_factory.mktemp("export")
    cfg = tiny_config(tmp, steps=1)
    cfg["stages"] = [cssr_stage(b) for b in ZOO if b in registry("backbone")]
    cfg["profile"] = {"hr_size": [16, 16], "latency": False}
    cfg["eval"] = {"bicubic": False}
    assert main(["run", str(write_config(tmp / "c.yaml", cfg)), "--quiet"]) == 0
    return tmp / "run"


def branch_output(run: Path, stage: str, branch: str, x: torch.Tensor) -> torch.Tensor:
    from kdsr.models import load_run

    _, stages = load_run(run)
    with torch.no_grad():
        return stages[stage].branches[branch](x)


def test_an_export_carries_its_multi_adds_so_routing_over_it_counts_nothing(cssr_run, tmp_path, monkeypatch):
    """The export writes the branch's Multi-Adds per LR pixel at a 1280x720 output (counted there: this
    run's report counted a 16x16 output); `kdsr infer` over the file reads them instead of counting."""
    from kdsr.engine.infer import choices_for, make_router
    from kdsr.models import load_run, open_models
    from kdsr.plain import describe
    from kdsr.profiling import HR_720P, lr_size_for, profile_macs
    from kdsr.report import BranchModule

    out = tmp_path / "w05.safetensors"
    assert main(["export", str(cssr_run), "--stage", "edsr-baseline", "--branch", "w0.5", "--out", str(out)]) == 0
    _, stages = load_run(cssr_run)
    h, w = lr_size_for(HR_720P, 2)
    expected = profile_macs(BranchModule(stages["edsr-baseline"].branches["w0.5"]), (h, w)).total / (h * w)
    assert describe(out).macs_per_lr_pixel == pytest.approx(expected)
    models = open_models(out)
    assert models.macs_per_pixel == {"w05": pytest.approx(expected)}
    with monkeypatch.context() as patch:
        patch.setattr("kdsr.engine.infer.macs_per_lr_pixel", lambda *a, **k: pytest.fail("counted again"))
        assert make_router(models, "full").choices[0].macs_per_pixel == pytest.approx(expected)
    from safetensors.torch import load_file, save_file  # an older export, without the count: counted on load

    save_file(load_file(str(out)), str(tmp_path / "old.safetensors"), {k: v for k, v in describe(out).meta.items() if k != "macs_per_lr_pixel"})
    old = open_models(tmp_path / "old.safetensors")
    assert old.macs_per_pixel == {} and choices_for(old.candidates, 2)[0].macs_per_pixel == pytest.approx(expected)


@pytest.mark.parametrize("backbone", list(ZOO))
def test_exported_w05_equals_the_branch(cssr_run, tmp_path, backbone):
    if backbone not in registry("backbone"):
        pytest.skip(f"{backbone} is not registered")
    stage = backbone.replace("_", "-")
    out = tmp_path / "w05.safetensors"
    assert main(["export", str(cssr_run), "--stage", stage, "--branch", "w0.5", "--out", str(out)]) == 0
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["backbone"] == backbone and meta["scale"] == "2" and meta["source_branch"] == "w0.5"
    narrow = json.loads(meta["options"])
    full = ZOO[backbone]
    width_key = "nf" if "nf" in full else "n_feats"
    assert narrow[width_key] == full[width_key] // 2  # the narrow network, not the shared one
    import kdsr

    model = kdsr.load(out)
    x = torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (model(x) - branch_output(cssr_run, stage, "w0.5", x)).abs().max().item()
    assert diff <= 1e-6


def test_onnx_export_matches_torch_under_onnxruntime(cssr_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "w05.onnx"
    assert main(["export", str(cssr_run), "--stage", "edsr-baseline", "--branch", "w0.5", "--out", str(out)]) == 0
    side = json.loads((tmp_path / "w05.onnx.json").read_text())
    assert side["backbone"] == "edsr_baseline" and side["format"] == "onnx"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 17, 23), (2, 3, 30, 9)]:  # dynamic batch, H and W
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(4))
        got = torch.from_numpy(session.run(None, {"lr": x.numpy()})[0])
        assert got.shape == (shape[0], 3, shape[2] * 2, shape[3] * 2)
        assert (got - branch_output(cssr_run, "edsr-baseline", "w0.5", x)).abs().max().item() <= 1e-4


def test_torchscript_export_runs_without_kdsr(cssr_run, tmp_path):
    out = tmp_path / "w05.ts"
    assert main(["export", str(cssr_run), "--stage", "carn", "--branch", "w0.5", "--out", str(out)]) == 0
    assert json.loads((tmp_path / "w05.ts.json").read_text())["backbone"] == "carn"
    traced = torch.jit.load(str(out))
    x = torch.rand(1, 3, 15, 21, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (traced(x) - branch_output(cssr_run, "carn", "w0.5", x)).abs().max().item() <= 1e-6


@pytest.mark.parametrize(
    "args, words",
    [
        (["--stage", "carn", "--branch", "w0.3"], ["no trained branch 'w0.3'", "w1.0, w0.5"]),
        (["--stage", "nope", "--branch", "w0.5"], ["no finished stage 'nope'"]),
    ],
)
def test_unknown_branch_or_stage_is_one_line_and_writes_nothing(cssr_run, tmp_path, capsys, args, words):
    out = tmp_path / "x.safetensors"
    assert main(["export", str(cssr_run), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_suffix_and_missing_onnxruntime_are_one_line(cssr_run, tmp_path, capsys, monkeypatch):
    assert main(["export", str(cssr_run), "--out", str(tmp_path / "x.bin")]) == 2
    assert "--format" in capsys.readouterr().err
    import builtins

    real = builtins.__import__

    def no_ort(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    assert main(["export", str(cssr_run), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kdsr[onnx]" in err
    assert list(tmp_path.iterdir()) == []


def test_a_branch_without_to_plain_is_refused(tmp_path, capsys):
    """A student constructor whose module is neither Exportable nor an independent backbone."""
    from kdsr import Branch, hookimpl
    from kdsr.plugins import get_plugins

    class Wrapped(torch.nn.Module):
        def __init__(self, scale: int) -> None:
            super().__init__()
            self.inner = registry("backbone").create("edsr_baseline", {"n_feats": 4, "n_resblocks": 1}, scale=scale)

        def forward(self, x):
            return self.inner(x)

    class Plugin:
        @hookimpl
        def register_students(self, register):
            def wrapped_test(teacher, scale: int) -> dict:
                """A wrapped EDSR (test plugin)."""
                return {"student": Branch(Wrapped(scale))}

            register("wrapped_export_test", wrapped_test)

    plugins = get_plugins()
    if "wrapped_export_test" not in plugins.registry("student"):
        assert plugins.add(Plugin(), "wrapped-export-test").ok
    cfg = tiny_config(tmp_path, steps=1)
    cfg["stages"] = [{"name": "s", "steps": 1, "student": {"constructor": "wrapped_export_test"}}]
    cfg["profile"] = {"hr_size": [16, 16], "latency": False}
    assert main(["run", str(write_config(tmp_path / "c.yaml", cfg)), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "to_plain" in err and "wrapped_export_test" in err and not (tmp_path / "x.safetensors").exists()


def test_hkdsr_student_exports_without_its_heads(tmp_path):
    """An HKDSR student (backbone + intermediate SR heads) exports as its plain backbone."""
    if "hkdsr" not in registry("student"):
        pytest.skip("the hkdsr plugin is not installed")
    cfg = tiny_config(tmp_path, steps=1)
    options = {"n_feats": 8, "n_resblocks": 2}
    cfg["stages"] = [
        {"name": "s", "steps": 1, "student": {"constructor": "hkdsr", "options": {"backbone": "edsr_baseline", "options": options}}}
    ]
    cfg["profile"] = {"hr_size": [16, 16], "latency": False}
    assert main(["run", str(write_config(tmp_path / "c.yaml", cfg)), "--quiet"]) == 0
    out = tmp_path / "student.safetensors"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    assert not any(k.startswith("heads.") for k in load_file(str(out)))
    import kdsr

    x = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        diff = (kdsr.load(out)(x) - branch_output(tmp_path / "run", "s", "student", x)).abs().max().item()
    assert diff <= 1e-6 and type(kdsr.load(out)).__name__ == "EDSR"
