"""Parameters, Multi-Adds (fvcore) and latency: the cost columns of a report (methods.md §6.4).

Multi-Adds follow the lightweight-SR convention: multiply-accumulates (one multiply-add = 1), counted by
fvcore's ``FlopCountAnalysis`` for the LR input whose SR output is 1280x720 (``lr_size_for``).

Tracing a big network at 720p on real tensors takes minutes on a CPU (EDSR 32x256 x2 is 9.4 T MACs), so
``profile_macs`` traces a parameter-free copy of the model on the **meta device**: fvcore sees the same
jit graph with the same shapes, and nothing is computed. One detail makes that work: the jit tracer
never records ``aten::convolution`` (it records the ``aten::_convolution`` that the CPU kernel calls
inside it), and a meta tensor never reaches that inner call. While tracing on meta, the ``F.conv*``
functions therefore call ``aten::_convolution`` directly -- the very op, with the very arguments, that a
CPU trace records. If the meta trace fails or misses a convolution, the model is traced on real
tensors instead (with a warning).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsr.errors import KdsrError

HR_720P = (720, 1280)  # (H, W) of the SR output the Multi-Adds convention is stated for
COUNTER = "fvcore FlopCountAnalysis (default handles; 1 multiply-add = 1)"


def count_params(model: nn.Module) -> int:
    """Number of parameters, each shared tensor counted once."""
    unique = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in unique.values())


def lr_size_for(hr_size: Sequence[int] = HR_720P, scale: int | None = None) -> tuple[int, int]:
    """LR ``(H, W)`` whose x``scale`` SR output covers ``hr_size`` (ceil division: x3 of 1280 is 427)."""
    if scale is None:
        raise TypeError("lr_size_for() needs the scale, e.g. lr_size_for(scale=2)")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise KdsrError(f"scale must be a positive integer, got {scale!r}")
    h, w = _size(hr_size, "hr_size")
    return -(-h // scale), -(-w // scale)


@dataclass(frozen=True)
class MacsResult:
    """Multi-Adds of one forward pass, and what was not counted."""

    total: int
    by_module: dict[str, int]  # top-level children of the model
    skipped_ops: dict[str, int]  # ops fvcore has no handle for (counted as 0), with occurrences
    by_operator: dict[str, int]
    lr_size: tuple[int, int]
    traced_on: str  # "meta", or the device of the real-tensor fallback
    counter: str = COUNTER


def count_macs(model: nn.Module, lr_size: Sequence[int], forward_kwargs: dict[str, Any] | None = None) -> int:
    """Multi-Adds of ``model(x, **forward_kwargs)`` for an LR input of ``lr_size`` (H, W)."""
    return profile_macs(model, lr_size, forward_kwargs).total


def macs_per_lr_pixel(model: nn.Module, scale: int) -> float:
    """Multi-Adds per LR pixel of ``model`` at a 1280x720 output (``HR_720P``): the one convention routing
    prices branches by and an export records."""
    h, w = lr_size_for(HR_720P, scale)
    return profile_macs(model, (h, w)).total / (h * w)


def profile_macs(
    model: nn.Module,
    lr_size: Sequence[int],
    forward_kwargs: dict[str, Any] | None = None,
    *,
    in_channels: int = 3,
    meta: bool = True,
) -> MacsResult:
    """Multi-Adds of one forward pass in eval mode on a 1 x ``in_channels`` x H x W input.

    Ops without an fvcore handle (pixel shuffle, add, mul, activations...) carry no multiply-adds and are
    listed in ``skipped_ops`` rather than warned about. If the meta trace fails, real tensors are traced
    on the model's device (a ``RuntimeWarning`` says so); ``meta=False`` goes there directly. The model
    itself is left untouched (its train/eval flags are restored).
    """
    size = _size(lr_size, "lr_size")
    kwargs = dict(forward_kwargs or {})
    if meta:
        try:
            return _analyze(_meta_copy(model), size, in_channels, _to_meta(kwargs), "meta")
        except Exception as exc:
            if _on_meta(model):
                raise KdsrError(
                    f"cannot count Multi-Adds of {type(model).__name__} on the meta device ({type(exc).__name__}: "
                    f"{exc}); build the model on a real device to profile it"
                ) from exc
            warnings.warn(
                f"Multi-Adds: meta-device tracing of {type(model).__name__} failed ({type(exc).__name__}: {exc}); "
                "tracing real tensors instead, which is slow for large inputs",
                RuntimeWarning,
                stacklevel=2,
            )
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        return _analyze(model, size, in_channels, kwargs, str(device))
    finally:
        for m, was_training in flags.items():
            m.training = was_training


class _Call(nn.Module):
    """``model(x, **kwargs)`` as a one-input module, since fvcore passes positional inputs only."""

    def __init__(self, model: nn.Module, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.kwargs = kwargs

    def forward(self, x: Tensor) -> Any:
        return self.model(x, **self.kwargs)


def _analyze(
    model: nn.Module, size: tuple[int, int], in_channels: int, kwargs: dict[str, Any], traced_on: str
) -> MacsResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter and fvcore's import-time deprecation notices
        from fvcore.nn import FlopCountAnalysis

    wrapped = _Call(model, kwargs)
    device = torch.device("meta") if traced_on == "meta" else torch.device(traced_on)
    x = torch.zeros(1, in_channels, *size, dtype=_dtype(model), device=device)
    analysis = FlopCountAnalysis(wrapped, (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.set_op_handle("aten::_convolution_mode", _conv_mode_handle)
    linear_types = (nn.modules.conv._ConvNd, nn.Linear)
    called: set[str] = set()
    hooks = [
        m.register_forward_hook(lambda *_, n=name: called.add(n))
        for name, m in wrapped.named_modules()
        if isinstance(m, linear_types)
    ]
    try:
        with warnings.catch_warnings(), torch.no_grad(), _convs_as_aten_convolution(traced_on == "meta"):
            warnings.simplefilter("ignore")
            total = int(analysis.total())
            per_module = {k: int(v) for k, v in analysis.by_module().items()}
            by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
            skipped = {k: int(v) for k, v in analysis.unsupported_ops().items()}
    finally:
        for h in hooks:
            h.remove()
    # A meta trace that silently lost a convolution would under-count: refuse it (-> real-tensor trace).
    uncounted = sorted(n for n in called if per_module.get(n, 0) == 0 and _has_work(wrapped.get_submodule(n)))
    if uncounted and traced_on == "meta":
        names = ", ".join(n.removeprefix("model.") for n in uncounted)
        raise RuntimeError(f"the meta trace recorded no Multi-Adds for {names}")
    prefix = "model."
    top = {k[len(prefix):]: v for k, v in per_module.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
    return MacsResult(total, top, dict(sorted(skipped.items())), dict(sorted(by_operator.items())), size, traced_on)


def _conv_mode_handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore's conv count for ``padding='same'|'valid'`` convs, which trace as ``aten::_convolution_mode``."""
    from fvcore.nn.jit_handles import conv_flop_count, get_shape

    return Counter({"conv": conv_flop_count(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(outputs[0]))})


def _has_work(m: nn.Module) -> bool:
    return all(p.numel() > 0 for p in m.parameters(recurse=False))


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers live on the meta device (no data copied; sharing kept)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    clone = copy.deepcopy(model, memo)
    return clone.eval()


def _to_meta(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: torch.empty_like(v, device="meta") if isinstance(v, Tensor) else v for k, v in kwargs.items()}


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _size(size: Sequence[int], what: str) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise KdsrError(f"{what} must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise KdsrError(f"{what} must be positive, got {size!r}")
    return h, w


# --- convolutions routed to aten::_convolution while tracing on meta -------------------------------


def _ntuple(v: Any, n: int) -> list[int]:
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v)] * n


def _cudnn_flags() -> tuple[bool, bool, bool, bool]:
    c = torch.backends.cudnn
    return bool(c.benchmark), bool(c.deterministic), bool(c.enabled), bool(c.allow_tf32)


def _aten_conv(n: int, transposed: bool) -> Callable[..., Tensor]:
    def conv(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
             *args: Any, **kwargs: Any) -> Tensor:
        names = ("output_padding", "groups", "dilation") if transposed else ("dilation", "groups")
        opts = {"output_padding": 0, "groups": 1, "dilation": 1, **dict(zip(names, args)), **kwargs}
        dilation = _ntuple(opts["dilation"], n)
        unbatched = input.dim() == n + 1
        if unbatched:
            input = input.unsqueeze(0)
        if isinstance(padding, str):  # 'valid' / 'same', as aten's _convolution_mode pads
            input, pads = _string_padding(input, weight, padding, dilation, n)
        else:
            pads = _ntuple(padding, n)
        out = torch.ops.aten._convolution(
            input, weight, bias, _ntuple(stride, n), pads, dilation, transposed,
            _ntuple(opts["output_padding"], n), int(opts["groups"]), *_cudnn_flags(),
        )
        return out.squeeze(0) if unbatched else out

    return conv


def _string_padding(input: Tensor, weight: Tensor, mode: str, dilation: list[int], n: int) -> tuple[Tensor, list[int]]:
    if mode == "valid":
        return input, [0] * n
    if mode != "same":
        raise ValueError(f"invalid padding string {mode!r}")
    kernel = [int(k) for k in weight.shape[2:]]  # ints: arithmetic on traced sizes would be recorded
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    left = [t // 2 for t in total]
    extra: list[int] = []
    for t, lo in reversed(list(zip(total, left))):  # pad order: last dim first; the odd pixel goes right
        extra += [0, t - 2 * lo]
    if any(extra):
        input = torch.ops.aten.constant_pad_nd(input, extra, 0.0)
    return input, left


_CONV_NAMES = {f"conv{n}d": (n, False) for n in (1, 2, 3)} | {f"conv_transpose{n}d": (n, True) for n in (1, 2, 3)}


@contextmanager
def _convs_as_aten_convolution(enabled: bool) -> Iterator[None]:
    """Route ``F.conv*`` / ``torch.conv*`` to ``aten::_convolution`` (same maths) for the duration."""
    if not enabled:
        yield
        return
    saved = {(ns, name): getattr(ns, name) for ns in (F, torch) for name in _CONV_NAMES}
    try:
        for (ns, name) in saved:
            setattr(ns, name, _aten_conv(*_CONV_NAMES[name]))
        yield
    finally:
        for (ns, name), fn in saved.items():
            setattr(ns, name, fn)


# --- latency --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one forward pass, with the conditions it was measured under."""

    median_s: float
    p90_s: float
    repeats: int
    threads: int
    device: str


def measure_latency(
    fn: nn.Module | Callable[..., Any], input: Tensor | tuple[Any, ...], repeats: int = 10, warmup: int = 2
) -> Latency:
    """Median and 90th-percentile time of ``fn(input)`` under ``torch.inference_mode`` (a module in eval mode).

    CUDA work is synchronised before each clock read, so queued kernels are timed too.
    """
    if repeats < 1 or warmup < 0:
        raise KdsrError(f"latency needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    args = input if isinstance(input, tuple) else (input,)
    device = next((a.device for a in args if isinstance(a, Tensor)), torch.device("cpu"))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    flags = {m: m.training for m in fn.modules()} if isinstance(fn, nn.Module) else {}
    if isinstance(fn, nn.Module):
        fn.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                fn(*args)
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        for m, was_training in flags.items():
            m.training = was_training
    ordered = sorted(times)
    p90 = ordered[max(math.ceil(0.9 * len(ordered)) - 1, 0)]
    return Latency(statistics.median(ordered), p90, repeats, torch.get_num_threads(), str(device))
