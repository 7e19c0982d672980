"""``kdsr export``: one trained branch of a run as a standalone network file.

The branch becomes its plain network (:func:`kdsr.models.plain_branch`), which is checked against the
branch itself before anything is written; then one of

* ``safetensors``: the weights, described in the file's metadata (:meth:`PlainNetwork.metadata`, with
  the Multi-Adds the run's report counted, or counted here), so ``kdsr eval`` / ``kdsr infer`` /
  ``kdsr.load`` / a config's ``weights:`` need nothing else;
* ``onnx``: the network with dynamic batch, height and width (``torch.onnx.export``, the torch.export
  based exporter), checked under onnxruntime at another input size; needs ``pip install kdsr[onnx]``;
* ``torchscript``: ``torch.jit.trace``, checked at another input size.

ONNX and TorchScript files get the description as a ``<file>.json`` sidecar. A failed check or export
writes nothing.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsr.errors import KdsrError
from kdsr.files import write_atomic
from kdsr.plain import sidecar
from kdsr.profiling import macs_per_lr_pixel
from kdsr.weights import save_weights

FORMATS = ("safetensors", "onnx", "torchscript")
SUFFIX_FORMATS = {".safetensors": "safetensors", ".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript"}
ONNX_EXTRA = "pip install 'kdsr[onnx]'"
TRACE_SIZE = (24, 24)  # LR size the network is traced / checked at
CHECK_SIZE = (2, 19, 29)  # batch, h, w of the second check: other sizes than traced
TOLERANCE = 1e-4  # max |diff| (outputs in [0, 1]) between the export and the branch it came from


def format_of(out: Path, fmt: str | None) -> str:
    """The format named, or the one ``out``'s suffix implies."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise KdsrError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}")
        return fmt
    if out.suffix.lower() not in SUFFIX_FORMATS:
        raise KdsrError(f"--out '{out}': cannot tell the format from '{out.suffix}'; use .safetensors / .onnx / .ts or give --format")
    return SUFFIX_FORMATS[out.suffix.lower()]


def require_onnx() -> None:
    """onnx, onnxscript (the exporter) and onnxruntime (the check), or a one-line error naming the extra."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise KdsrError(f"ONNX export needs '{module}', which is not installed; {ONNX_EXTRA}") from None


def export(run_dir: Path, out: Path, branch: str | None = None, stage: str | None = None, fmt: str | None = None) -> dict[str, Any]:
    """Write ``branch`` of ``stage`` of the run as ``out``; returns what was written and the checks' max |diff|."""
    from kdsr.models import load_run, pick_branch, plain_branch, reported_macs

    run_dir, out = Path(run_dir), Path(out)
    fmt = format_of(out, fmt)
    if fmt == "onnx":
        require_onnx()
    config, stages = load_run(run_dir)
    stage, branch = pick_branch(run_dir, stages, branch, stage)
    plain = plain_branch(config, stages[stage], branch)
    net = plain.build()
    diff = max_diff(net, stages[stage].branches[branch], torch.rand(1, 3, *TRACE_SIZE, generator=torch.Generator().manual_seed(0)))
    if diff > TOLERANCE:
        raise KdsrError(
            f"the plain {plain.backbone} of branch '{branch}' differs from the branch by {diff:.2e} (> {TOLERANCE:g}); "
            f"its plugin's to_plain is wrong, report it (nothing was written)"
        )
    # counted once here (or taken from the report), so routing over the file reads them instead of counting at every start
    macs = reported_macs(run_dir, config, stages).get((stage, branch)) or macs_per_lr_pixel(net, plain.scale)
    meta = plain.metadata(format=fmt, macs_per_lr_pixel=macs, run=str(run_dir), stage=stage, branch=branch)
    checks = {"plain_vs_branch": diff}
    if fmt == "safetensors":
        save_weights(plain.state_dict, out, meta)
    else:
        data, checks[f"{fmt}_vs_torch"] = (to_onnx if fmt == "onnx" else to_torchscript)(net)
        write_atomic(out, data)
        write_atomic(sidecar(out), json.dumps(meta, indent=1).encode())
    return {
        "output": str(out),
        "format": fmt,
        "backbone": plain.backbone,
        "options": plain.options,
        "scale": plain.scale,
        "stage": stage,
        "branch": branch,
        "max_diff": checks,
    }


@torch.no_grad()
def max_diff(a: Any, b: Any, x: torch.Tensor) -> float:
    return float((a(x).float() - b(x).float()).abs().max())


def _check_input() -> torch.Tensor:
    return torch.rand(*CHECK_SIZE[:1], 3, *CHECK_SIZE[1:], generator=torch.Generator().manual_seed(1))


def to_onnx(net: nn.Module) -> tuple[bytes, float]:
    """ONNX bytes with dynamic batch/H/W, and max |onnxruntime - torch| at an untraced size."""
    import onnxruntime as ort

    x = torch.rand(1, 3, *TRACE_SIZE)
    auto = torch.export.Dim.AUTO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                net, (x,), input_names=["lr"], output_names=["sr"], dynamic_shapes=({0: auto, 2: auto, 3: auto},), dynamo=True, verbose=False
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdsrError(f"ONNX export of {type(net).__name__} failed ({first}); export safetensors or torchscript instead") from None
    data = program.model_proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    check = _check_input()
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: check.numpy()})[0])
    with torch.no_grad():
        diff = float((got - net(check)).abs().max())
    _refuse_if_off("ONNX (onnxruntime)", diff)
    return data, diff


def to_torchscript(net: nn.Module) -> tuple[bytes, float]:
    """A traced TorchScript archive, and its max |diff| to the network at an untraced size."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit.trace's deprecation and tracer warnings
        traced = torch.jit.trace(net, torch.rand(1, 3, *TRACE_SIZE))
        check = _check_input()
        diff = float((traced(check) - net(check)).abs().max())
    _refuse_if_off("TorchScript", diff)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(traced, buffer)
    return buffer.getvalue(), diff


def _refuse_if_off(what: str, diff: float) -> None:
    if not diff <= TOLERANCE:
        raise KdsrError(
            f"the {what} export differs from torch by {diff:.2e} at another input size (> {TOLERANCE:g}); "
            f"the network is not exportable this way (nothing was written), export safetensors instead"
        )

