"""The one inference engine: how every forward pass outside training runs (``kdsr infer``, ``kdsr eval``,
the report's and ``kdsr profile --latency``'s latency, exported students).

:func:`prepare` turns a branch into a runner, ``runner(lr) -> sr`` (float NCHW on the CPU or the
branch's device), chosen by a :class:`Runtime`:

* ``torch`` (default): a channels_last copy of the network under ``torch.inference_mode``: oneDNN's
  channels_last convolutions are the fast layout for the narrow 3x3 convolutions of SR students (about
  2x for 16 channels in a short check here). TorchScript freezing (oneDNN conv + ReLU / add fusion) is
  deprecated in torch 2.x and was not reliably faster in that check, so it is not the default;
  ``bench/speed_infer.py`` measures it beside the default so the choice can be revisited.
* ``onnxruntime`` / ``openvino``: the network exported once to ONNX (:func:`kdsr.export.to_onnx`, dynamic
  batch / H / W) and run by that runtime, with as many threads as torch uses; each runner is checked
  against the torch path on the same input before it is used.

Precision is opt-in: ``bf16`` is torch autocast (or OpenVINO's bf16 hint) and is refused on a CPU
without AMX / AVX512-BF16, where it would be emulated and slow; ``int8`` is onnxruntime's static
quantiser (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges) calibrated on LR images
from ``calibration``, run by onnxruntime or OpenVINO. ``kdsr eval`` shows what a lower precision costs
next to fp32 (:func:`with_delta`).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdsr.branches import Branch
from kdsr.errors import KdsrError

PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime", "openvino")
EXTRAS = {"onnxruntime": "pip install 'kdsr[onnx]'", "openvino": "pip install 'kdsr[openvino]'"}
CHECK_SIZE = (2, 3, 20, 28)  # the probe a backend is checked on against torch
TOLERANCE = {"fp32": 1e-3, "bf16": 0.05, "int8": 0.25}  # max |diff| to torch fp32 (outputs in [0, 1])
CALIBRATION_IMAGES, CALIBRATION_CROP = 16, 96

Runner = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Runtime:
    """How inference runs: ``precision`` fp32 / bf16 / int8, ``backend`` torch / onnxruntime / openvino
    (``None``: torch, or onnxruntime for int8), and for int8 a ``calibration`` folder of images."""

    precision: str = "fp32"
    backend: str | None = None
    calibration: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise KdsrError(f"--precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.backend is not None and self.backend not in BACKENDS:
            raise KdsrError(f"--backend '{self.backend}' is not one of {', '.join(BACKENDS)}")

    @property
    def engine(self) -> str:
        """The backend that runs: the one named, else torch (onnxruntime for int8)."""
        return self.backend or ("onnxruntime" if self.precision == "int8" else "torch")

    @property
    def label(self) -> str:
        return self.precision if self.engine == "torch" else f"{self.engine} {self.precision}"

    @property
    def is_default(self) -> bool:
        return self.precision == "fp32" and self.engine == "torch"


FP32 = Runtime()


def check_runtime(runtime: Runtime, device: torch.device | str = "cpu") -> None:
    """Refuse, in one line naming the option and the way out, what this machine cannot run."""
    engine, device = runtime.engine, torch.device(device)
    if engine != "torch":
        if device.type != "cpu":
            raise KdsrError(f"--backend {engine} runs on the CPU; use --backend torch on {device.type}")
        module = "onnxruntime" if engine == "onnxruntime" else "openvino"
        if not _importable(module):
            raise KdsrError(f"--backend {engine} needs the '{module}' package, which is not installed; {EXTRAS[engine]}")
        if not all(_importable(m) for m in ("onnx", "onnxscript")):
            raise KdsrError(f"--backend {engine} exports the network to ONNX first, which needs 'onnx' and 'onnxscript'; {EXTRAS['onnxruntime']}")
    if runtime.precision == "bf16":
        if engine == "onnxruntime":
            raise KdsrError("--precision bf16 is not offered by onnxruntime on the CPU; use --backend torch or openvino")
        if device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise KdsrError("--precision bf16 needs a GPU with bf16 support; use --precision fp32")
        elif not cpu_has_bf16():
            raise KdsrError(
                f"--precision bf16 needs a CPU with AMX or AVX512-BF16 (this one: {torch.backends.cpu.get_cpu_capability()}), "
                "without them it is emulated and slower than fp32; use --precision fp32 (or int8)"
            )
    if runtime.precision == "int8":
        if engine == "torch":
            raise KdsrError("--precision int8 runs through onnxruntime's quantiser; use --backend onnxruntime or openvino")
        if runtime.calibration is None:
            raise KdsrError("--precision int8 needs --calibration DIR: a folder of images to calibrate the activation ranges on")
        if not _importable("onnxruntime"):
            raise KdsrError(f"--precision int8 needs the 'onnxruntime' package (its quantiser), which is not installed; {EXTRAS['onnxruntime']}")


@lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AMX-BF16 or AVX512-BF16 (``/proc/cpuinfo`` flags, else
    torch's CPU capability)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    if flags:
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- runners


class TorchRunner:
    """The branch's network (see :func:`inference_copy`) run channels_last under ``inference_mode``
    (bf16: under CPU/GPU autocast). The caller's network is left as it was (layout, training flags)."""

    def __init__(self, branch: Branch, device: torch.device | str = "cpu", bf16: bool = False, copies: dict | None = None) -> None:
        memo = copies if copies is not None else {}
        key = (id(branch.model), repr(sorted(branch.kwargs.items())))
        if key not in memo:
            memo[key] = inference_copy(branch, device)
        (self.model, self.kwargs), self.device = memo[key], torch.device(device)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def __call__(self, x: Tensor) -> Tensor:
        with torch.inference_mode(), self.autocast:
            y = self.model(x.to(self.device).contiguous(memory_format=torch.channels_last), **self.kwargs)
        return y.float()


def inference_copy(branch: Branch, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The network (and forward kwargs) a branch runs as at inference, in eval mode and channels_last.

    A branch that knows its plain network (:class:`kdsr.plain.Exportable`, e.g. a width of a CSSR-Net)
    runs as that network: its own contiguous narrow weights instead of slices of the wide ones, so a
    0.25 branch costs what an independent 16-channel network costs. It is used only if it reproduces
    the branch on a probe (the check ``kdsr export`` makes); otherwise, and for any other branch, a
    copy of the network runs. A network that cannot be copied runs as it is (its layout kept).
    """
    from kdsr.plain import Exportable

    with torch.no_grad():
        probe = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(_device_of(branch.model))
        if isinstance(branch.model, Exportable):
            try:
                plain = branch.model.to_plain(**branch.kwargs).build().to(_device_of(branch.model))
                if float((plain(probe) - branch(probe)).abs().max()) <= 1e-4:
                    return _fast_layout(plain.eval(), {}, probe, device)
            except Exception:  # noqa: BLE001 - a plugin's to_plain that fails: run the branch itself
                pass
        try:
            clone = copy.deepcopy(branch.model)
        except Exception:  # noqa: BLE001 - e.g. a plugin network holding an uncopyable handle
            return branch.model, dict(branch.kwargs)
    return _fast_layout(clone.eval(), dict(branch.kwargs), probe, device)


def _fast_layout(model: nn.Module, kwargs: dict[str, Any], probe: Tensor, device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` (a copy kdsr owns) channels_last on ``device``, its pixel shuffles made channels_last ones
    (:func:`shuffle_channels_last`) where that leaves its output on ``probe`` as it was."""
    with torch.no_grad():
        fast = shuffle_channels_last(copy.deepcopy(model))
        if fast is not None and float((fast(probe, **kwargs) - model(probe, **kwargs)).abs().max()) <= 1e-5:
            model = fast
    return model.to(device).to(memory_format=torch.channels_last), kwargs


class ChannelsLastShuffle(nn.Module):
    """``nn.PixelShuffle(r)`` for input channels ordered (row offset, column offset, channel) instead of
    (channel, row offset, column offset): in channels_last memory each output pixel is then one
    contiguous run of input channels, so the shuffle is a copy of contiguous blocks, where the standard
    order makes it a gather with stride r^2 (on a 2-core AVX-512 EPYC, 9% of a 16-channel EDSR x4's
    time at 720p; the network 1.13x faster without it). Made by :func:`shuffle_channels_last`, which
    reorders the producing convolution's filters to match."""

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = upscale_factor

    def forward(self, x: Tensor) -> Tensor:
        n, k, h, w = x.shape
        r = self.upscale_factor
        y = x.permute(0, 2, 3, 1).reshape(n, h, w, r, r, k // (r * r)).permute(0, 1, 3, 2, 4, 5)
        return y.reshape(n, h * r, w * r, k // (r * r)).permute(0, 3, 1, 2)  # NCHW, channels_last in memory


_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity)  # commute with a reordering of channels


def shuffle_channels_last(model: nn.Module) -> nn.Module | None:
    """``model`` with each ``Conv2d -> [elementwise activation] -> PixelShuffle`` run of an ``nn.Sequential``
    rewritten in place as the conv with its output channels reordered and :class:`ChannelsLastShuffle`:
    the same function, computed faster in channels_last. ``None`` if there is no such run. Grouped convs
    are left alone (reordering would mix their groups); callers check the result on a probe, as a
    network may also call a conv of the run outside its ``Sequential``."""
    found = False
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for i, name in enumerate(names):
            shuffle = seq._modules[name]
            if not isinstance(shuffle, nn.PixelShuffle):
                continue
            j = i - 1
            while j >= 0 and isinstance(seq._modules[names[j]], _ELEMENTWISE):
                j -= 1
            conv, r = (seq._modules[names[j]] if j >= 0 else None), shuffle.upscale_factor
            if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.out_channels % (r * r):
                continue
            c = conv.out_channels // (r * r)
            order = torch.arange(conv.out_channels).view(c, r * r).t().reshape(-1)  # (offset, channel) <- (channel, offset)
            with torch.no_grad():
                conv.weight.copy_(conv.weight[order])
                if conv.bias is not None:
                    conv.bias.copy_(conv.bias[order])
            seq._modules[name] = ChannelsLastShuffle(r)
            found = True
    return model if found else None


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class OnnxRunner:
    """The network as an ONNX graph run by onnxruntime or OpenVINO on the CPU."""

    def __init__(self, onnx_model: bytes, engine: str, precision: str) -> None:
        threads = torch.get_num_threads()
        if engine == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            self._run = lambda x: session.run(None, {name: x})[0]
        else:
            import openvino as ov

            core = ov.Core()
            hint = "bf16" if precision == "bf16" else "f32"  # int8 graphs run int8 kernels whatever the hint
            compiled = core.compile_model(core.read_model(onnx_model), "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
            self._run = lambda x: compiled(x)[compiled.output(0)]

    def __call__(self, x: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray(self._run(x.detach().float().cpu().contiguous().numpy())))


def prepare(branch: Branch | nn.Module, runtime: Runtime = FP32, device: torch.device | str = "cpu", copies: dict | None = None) -> Runner:
    """The runner of ``branch`` under ``runtime``: ``runner(lr) -> sr`` (float NCHW).

    ``copies`` (a dict the caller keeps) lets branches of one network share one prepared copy. A
    backend other than torch is checked against torch on a probe input, and refused (one line) when it
    disagrees by more than ``TOLERANCE[precision]``.
    """
    branch = branch if isinstance(branch, Branch) else Branch(branch)
    if getattr(branch.model, "runs_engine", False):  # e.g. a tiled router: it prepared its own branches
        return branch
    check_runtime(runtime, device)
    if runtime.engine == "torch":
        return TorchRunner(branch, device, runtime.precision == "bf16", copies)
    from kdsr.export import to_onnx
    from kdsr.report import BranchModule  # a branch as the one-input module export traces

    reference = TorchRunner(branch, "cpu", copies=copies)
    with torch.no_grad():
        net = BranchModule(Branch(copy.deepcopy(branch.model).eval().cpu(), dict(branch.kwargs))).eval()
    onnx_model, _ = to_onnx(net)  # checked under onnxruntime at another size
    if runtime.precision == "int8":
        onnx_model = quantize_int8(onnx_model, runtime.calibration)
    runner = OnnxRunner(onnx_model, runtime.engine, runtime.precision)
    probe = check_probe(runtime)
    diff = float((runner(probe) - reference(probe)).abs().max())
    if not diff <= TOLERANCE[runtime.precision]:
        raise KdsrError(
            f"--backend {runtime.engine} --precision {runtime.precision} differs from torch by {diff:.3g} on a probe "
            f"(> {TOLERANCE[runtime.precision]:g}); use --backend torch"
        )
    runner.max_diff = diff  # type: ignore[attr-defined]
    return runner


def check_probe(runtime: Runtime) -> Tensor:
    """The input a backend is checked on: random pixels, except for int8, whose activation ranges hold
    only for images like its calibration folder (uniform noise drives a trained network's activations
    past them: a 0.41 max miss on a trained Pro-CSD EDSR), so int8 is checked on the first calibration image."""
    if runtime.precision == "int8" and runtime.calibration is not None:
        return torch.from_numpy(calibration_inputs(Path(runtime.calibration), limit=1)[0])
    return torch.rand(*CHECK_SIZE, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- int8


def calibration_inputs(folder: Path, limit: int = CALIBRATION_IMAGES, crop: int = CALIBRATION_CROP) -> list[np.ndarray]:
    """Up to ``limit`` images of ``folder`` as network inputs (1x3xhxw float32 in [0, 1], centre crops of
    at most ``crop`` px): the activation ranges int8 is calibrated on."""
    from kdsr.data import list_images, read_image, to_float

    inputs = []
    for path in list_images(folder)[:limit]:
        img = to_float(read_image(path))
        h, w = img.shape[-2:]
        top, left = max(h - crop, 0) // 2, max(w - crop, 0) // 2
        inputs.append(img[:, top : top + crop, left : left + crop].unsqueeze(0).contiguous().numpy())
    return inputs


def quantize_int8(onnx_model: bytes, calibration: Path) -> bytes:
    """Static int8 quantisation of an ONNX graph by onnxruntime's quantiser, calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inputs = calibration_inputs(Path(calibration))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {"lr": x}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_model)
        quant_pre_process(str(src), str(src))  # shape inference and graph clean-up, as the quantiser asks
        quantize_static(
            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        return dst.read_bytes()


# ---------------------------------------------------------------- quality cost


def with_delta(reference: dict[str, Any], lowered: dict[str, Any], label: str) -> dict[str, Any]:
    """``{model: {set: scores}}`` of fp32 followed by each model at ``label`` (``name [label]``) with its
    ``psnr_delta`` (dB, lowered minus fp32) on every set."""
    out = dict(reference)
    for model, sets in lowered.items():
        if model not in reference or model == "bicubic":
            continue
        out[f"{model} [{label}]"] = {
            s: {**scores, **({"psnr_delta": scores["psnr"] - reference[model][s]["psnr"]} if "psnr" in scores else {})}
            for s, scores in sets.items()
        }
    return out
