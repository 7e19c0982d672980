"""Contract checks and tiny fixtures for plugin authors' pytest suites.

Call a check from an ordinary test; it raises ``AssertionError`` naming the rule that broke::

    from kdsr.testing import check_loss
    from my_plugin import my_loss

    def test_my_loss_keeps_the_contract():
        check_loss(my_loss, {"alpha": 0.3})

The checks run what the engine runs, on tiny CPU networks: a frozen teacher under ``no_grad``,
taps recorded by forward hooks, losses fed float32 outputs (also those of a bf16-autocast forward).
They are plain functions, not a pytest plugin, so they work from any test layout; the helpers
(``tiny_pair``, ``tiny_batch``, ``make_image_folder``, ``outputs_of``) are what you would wrap in
your own fixtures. Default networks are ``TinySR`` models whose taps follow the zoo's vocabulary
(``head``, ``body.0`` .. ``body.3``, ``body``, ``upsampler.in``, ``sr``); pass ``pair=`` for
anything else (e.g. a loss that needs your own student).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from kdsr.branches import Branch, Tap, capture, feature_taps
from kdsr.errors import KdsrError
from kdsr.inference import Choice, Policy
from kdsr.losses import Batch, Loss, Needs, Outputs
from kdsr.registry import Entry, Registry

Size = tuple[int, int]
LR_TAPS = ("head", "body", "upsampler.in")  # the zoo's shared LR-sized taps, plus body.0 .. body.{n-1}


# ---------------------------------------------------------------- fixtures


class TinySR(nn.Module):
    """A few-hundred-parameter SR network with the zoo's tap names, for fast contract checks."""

    def __init__(self, scale: int = 2, n_feats: int = 8, n_blocks: int = 4) -> None:
        super().__init__()
        self.n_blocks = n_blocks
        self.head = nn.Conv2d(3, n_feats, 3, padding=1)
        self.body = nn.Sequential(
            *(nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU()) for _ in range(n_blocks))
        )
        self.upsampler = nn.Sequential(
            nn.Conv2d(n_feats, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)
        )

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h = self.head(lr)
        return self.upsampler(self.body(h) + h)

    def feature_taps(self) -> dict[str, Tap]:
        taps = {"head": Tap(self.head)}
        taps.update({f"body.{i}": Tap(self.body[i]) for i in range(self.n_blocks)})
        taps["body"] = Tap(self.body)
        taps["upsampler.in"] = Tap(self.upsampler, kind="input")
        taps["sr"] = Tap(self)
        return taps


def tiny_pair(scale: int = 2, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(teacher, student)``: a frozen 8-channel and a trainable 4-channel ``TinySR``, seeded."""
    torch.manual_seed(seed)
    teacher = TinySR(scale, n_feats=8).eval().requires_grad_(False)
    student = TinySR(scale, n_feats=4).train()
    return teacher, student


def smooth_images(n: int, size: Size, seed: int = 0) -> np.ndarray:
    """``n`` smooth random RGB images (sums of sinusoids) in [0, 1], n x H x W x 3: SR has something to learn."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w, 3))
    for img in out:
        for c in range(3):
            for _ in range(3):
                fx, fy, ph = rng.uniform(0.02, 0.3), rng.uniform(0.02, 0.3), rng.uniform(0, 6.28)
                img[..., c] += np.sin(fx * x + fy * y + ph)
        img -= img.min()
        img /= img.max() + 1e-9
    return out


def make_image_folder(folder: Path, n: int = 4, size: Size = (40, 48), seed: int = 0) -> Path:
    """A folder of ``n`` small PNGs, usable as ``{name: folder, options: {root: ...}}`` in a config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(smooth_images(n, size, seed)):
        Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def tiny_batch(scale: int = 2, size: Size = (8, 8), batch: int = 2, seed: int = 0, bicubic: bool = False) -> Batch:
    """A training batch of ``size`` LR patches (HR is ``scale`` times larger), as the engine builds it."""
    h, w = size
    hr = torch.from_numpy(smooth_images(batch, (h * scale, w * scale), seed)).permute(0, 3, 1, 2).float()
    lr = F.avg_pool2d(hr, scale)
    up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False) if bicubic else None
    return Batch(lr, hr, up)


def outputs_of(model: nn.Module | Branch, lr: torch.Tensor, taps: Sequence[str] = (), bf16: bool = False) -> Outputs:
    """One branch's forward pass as the engine runs it: grad only if trainable, float32 results."""
    branch = model if isinstance(model, Branch) else Branch(model, trainable=any(p.requires_grad for p in model.parameters()))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.set_grad_enabled(branch.trainable), autocast, capture(branch.model, taps) as store:
        sr = branch(lr)
    return Outputs(sr.float(), {k: v.float() for k, v in store.items()})


# ---------------------------------------------------------------- plugins and options


def check_plugin(module: ModuleType | object, provides: dict[str, list[str]] | None = None, name: str = "under-test") -> dict[str, list[str]]:
    """The plugin registers without error (alone, through kdsr's loader); returns ``{kind: names}``.

    With ``provides``, the registered names must be exactly those.
    """
    from kdsr.plugins import Plugins

    info = Plugins().add(module, name)
    assert info.ok, f"plugin failed to register: {info.error}"
    got = {kind: sorted(names) for kind, names in info.provides.items()}
    if provides is not None:
        want = {kind: sorted(names) for kind, names in provides.items() if names}
        assert got == want, f"plugin registers {got}, expected {want}"
    return got


def check_options(
    factory: Callable[..., Any],
    kind: str,
    options: dict[str, Any] | None = None,
    reserved: Sequence[str] = (),
    require_defaults: bool = False,
) -> dict[str, Any]:
    """The factory works as a registered entry; returns its validated options.

    Checks: a one-line summary (first docstring line), ``options`` valid for the signature, and
    validated options that pickle and survive a JSON round trip (what ``config.resolved.yaml``
    stores) unchanged. ``require_defaults``: every option has a default that validates.
    """
    registry = Registry(kind, tuple(reserved))
    registry.add("under-test", factory, "under-test")
    entry: Entry = registry.get("under-test")
    assert entry.summary, f"{factory.__name__}: the first docstring line is the summary `kdsr plugins list` shows"
    if require_defaults:
        try:
            entry.validate({}, "check")
        except KdsrError as exc:
            raise AssertionError(f"every option needs a default that validates: {exc}") from None
    validated = entry.validate(options, "check")
    try:
        assert pickle.loads(pickle.dumps(validated)) == validated
    except Exception as exc:
        raise AssertionError(f"validated options {validated} must pickle unchanged: {exc!r}") from None
    plain = json.loads(json.dumps(entry.options_model().model_validate(validated).model_dump(mode="json")))
    assert entry.validate(plain, "check") == validated, (
        f"options change when written to and read back from a resolved config: {validated} -> {plain}"
    )
    return validated


# ---------------------------------------------------------------- losses


def check_loss(
    loss: Callable[..., Loss] | Loss,
    options: dict[str, Any] | None = None,
    *,
    pair: tuple[nn.Module, nn.Module] | None = None,
    scale: int = 2,
    sizes: Sequence[Size] = ((8, 8), (11, 13)),
    seed: int = 0,
) -> dict[str, float]:
    """A loss keeps the contract: returns ``{"HxW" / "HxW bf16": value}`` for further asserts.

    ``loss`` is its registered factory (options are then validated as a config would) or an instance.
    For each LR patch size, with float32 and bf16-autocast forwards: a finite scalar, gradients that
    reach the student's parameters (through its output and taps) and are finite, and the same value
    from a fresh loss built under the same seed. ``pair`` is ``(teacher, student)``; default
    ``tiny_pair(scale)``.
    """
    if isinstance(loss, Loss):
        assert options is None, "options apply to a factory, not to a built loss"
        build: Callable[[], Loss] = lambda: loss  # noqa: E731
    else:
        kwargs = check_options(loss, "loss", options)
        build = lambda: loss(**kwargs)  # noqa: E731
    teacher, student = pair or tiny_pair(scale, seed)
    values: dict[str, float] = {}
    for size in sizes:
        for bf16 in (False, True):
            label = f"{size[0]}x{size[1]}" + (" bf16" if bf16 else "")
            try:
                first = _loss_value(build, teacher, student, scale, size, bf16, seed, backward=True, label=label)
                again = _loss_value(build, teacher, student, scale, size, bf16, seed, backward=False, label=label)
            except (AssertionError, KdsrError):
                raise
            except Exception as exc:  # e.g. a loss that assumes one patch size
                raise AssertionError(f"{label}: the loss raised {type(exc).__name__}: {exc}") from exc
            assert torch.equal(first, again), f"{label}: not deterministic ({float(first)} then {float(again)})"
            values[label] = float(first)
    return values


def _loss_value(
    build: Callable[[], Loss], teacher: nn.Module, student: nn.Module, scale: int, size: Size, bf16: bool, seed: int, backward: bool, label: str
) -> torch.Tensor:
    torch.manual_seed(seed)
    loss = build()
    assert isinstance(loss, Loss), f"the factory returned {type(loss).__name__}, not a kdsr.Loss"
    needs = loss.needs
    assert isinstance(needs, Needs), f"{type(loss).__name__}.needs must be a kdsr.Needs"
    batch = tiny_batch(scale, size, seed=seed, bicubic=needs.bicubic)

    def compute() -> torch.Tensor:
        s = outputs_of(Branch(student), batch.lr, needs.student_taps, bf16)
        t = outputs_of(Branch(teacher, trainable=False), batch.lr, needs.teacher_taps, bf16) if needs.teacher else None
        return loss(s, t, batch)

    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in loss.parameters()):
        with torch.no_grad():  # lazy adaptors get their shapes from one pass, as in the engine
            compute()
    student.zero_grad(set_to_none=True)
    value = compute()
    assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{label}: a loss returns a 0-dim tensor, got {value!r}"
    assert torch.isfinite(value), f"{label}: loss is {value.item()}"
    if backward:
        assert value.requires_grad, f"{label}: the loss is not differentiable w.r.t. the student's outputs"
        value.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{label}: no gradient reaches the student's parameters"
        for p in [*student.parameters(), *loss.parameters()]:
            assert p.grad is None or torch.isfinite(p.grad).all(), f"{label}: non-finite gradient"
        student.zero_grad(set_to_none=True)
    return value.detach()


# ---------------------------------------------------------------- backbones


def check_backbone(
    backbone: str | Callable[..., nn.Module],
    scales: Sequence[int] = (2, 3, 4),
    *,
    options: dict[str, Any] | None = None,
    taps: Sequence[str] = (*LR_TAPS, "body.0"),
    lr_size: Size = (17, 23),
    bf16: bool = True,
    load_official: Callable[..., Any] | None = None,
    seed: int = 0,
) -> None:
    """A backbone keeps the zoo's contract at each scale.

    ``backbone`` is a registered name (its ``load_official`` comes along) or a factory. Checks: a
    summary and a validatable signature; on an odd, non-square LR size, exactly ``scale`` x the size
    and finite; the ``taps`` declared and every declared tap fired; LR-sized taps (``head``, ``body``,
    ``upsampler.in``, ``body.i`` numbered 0..n-1) N x C x h x w; ``sr`` equal to the output; a
    deterministic forward; a bf16-autocast forward and backward; the model's own weights round-trip
    through a safetensors file and ``load_official``. Weights are redrawn (seeded, N(0, 0.05)) so a
    zero-initialised layer cannot hide a broken path.
    """
    if isinstance(backbone, str):
        from kdsr.plugins import registry

        entry = registry("backbone").get(backbone, where="check_backbone")
        factory, load_official = entry.factory, load_official or entry.extra.get("load_official")
    else:
        factory = backbone
    kwargs = check_options(factory, "backbone", options, reserved=("scale",), require_defaults=True)
    for scale in scales:
        model = _seeded(factory(scale, **kwargs), seed)
        _check_forward(model, scale, taps, lr_size, seed, f"x{scale}")
        if bf16:
            _check_bf16(model, scale, lr_size, seed, f"x{scale}")
        if load_official is not None:
            _check_round_trip(model, factory(scale, **kwargs), load_official, f"x{scale}")


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)
    return model.eval()


def _lr(lr_size: Size, seed: int, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, *lr_size, generator=torch.Generator().manual_seed(seed))


def _check_forward(model: nn.Module, scale: int, required: Sequence[str], lr_size: Size, seed: int, label: str) -> None:
    x, (h, w) = _lr(lr_size, seed), lr_size
    declared = feature_taps(model)
    missing = [t for t in required if t not in declared]
    assert not missing, f"{label}: {type(model).__name__} lacks the taps {missing}"
    with torch.no_grad(), capture(model, list(declared)) as store:
        y = model(x)
    assert y.shape == (2, 3, h * scale, w * scale), f"{label}: LR {h}x{w} gave SR {tuple(y.shape)}"
    assert torch.isfinite(y).all(), f"{label}: non-finite output"
    assert set(store) == set(declared), f"{label}: declared taps that never fired: {set(declared) - set(store)}"
    lr_names = [t for t in declared if t in LR_TAPS or (t.startswith("body.") and t[5:].isdigit())]
    if lr_names:
        channels = store[lr_names[0]].shape[1]
        for t in lr_names:
            assert store[t].shape == (2, channels, h, w), f"{label}: tap {t} is {tuple(store[t].shape)}, not N x C x {h} x {w}"
    blocks = sorted(int(t[5:]) for t in lr_names if t.startswith("body."))
    assert blocks == list(range(len(blocks))), f"{label}: body.i taps are numbered 0..n-1, got {blocks}"
    if "sr" in declared:
        assert torch.equal(store["sr"], y), f"{label}: tap 'sr' is not the output"
    with torch.no_grad():
        assert torch.equal(model(x), y), f"{label}: forward is not deterministic"


def _check_bf16(model: nn.Module, scale: int, lr_size: Size, seed: int, label: str) -> None:
    model.train().zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(_lr(lr_size, seed))
    assert y.shape == (2, 3, lr_size[0] * scale, lr_size[1] * scale), f"{label} bf16: output {tuple(y.shape)}"
    assert torch.isfinite(y.float()).all(), f"{label} bf16: non-finite output"
    y.float().abs().mean().backward()
    assert any(p.grad is not None for p in model.parameters()), f"{label} bf16: no gradient"
    model.zero_grad(set_to_none=True)
    model.eval()


def _check_round_trip(source: nn.Module, target: nn.Module, load_official: Callable[..., Any], label: str) -> None:
    from kdsr.weights import load_weights, save_weights

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "own.safetensors"
        try:
            save_weights(dict(source.state_dict()), path)
            load_weights(target, path, convert=load_official)
        except Exception as exc:  # e.g. tied weights, which safetensors refuses
            raise AssertionError(f"{label}: the model's own weights do not survive a save/load round trip: {str(exc).strip().splitlines()[0]}") from exc
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), f"{label}: weight {key} changed in a save/load round trip"


# ---------------------------------------------------------------- students and policies


def check_student_constructor(
    factory: Callable[..., dict[str, Branch]],
    options: dict[str, Any] | None = None,
    *,
    teacher: nn.Module | None = None,
    scale: int = 2,
    lr_size: Size = (11, 13),
    seed: int = 0,
) -> dict[str, Branch]:
    """A student constructor keeps the contract; returns the branches it built.

    Checks: validatable options; a non-empty ``{name: kdsr.Branch}`` with a trainable branch; each
    branch maps LR to exactly ``scale`` x the size, finitely and deterministically; gradients reach
    trainable branches; ``branch_params`` (if the network defines it) within (0, all parameters];
    the same weights when built twice under one seed; the teacher left untouched. Default teacher:
    the ``tiny_pair`` teacher.
    """
    kwargs = check_options(factory, "student", options, reserved=("teacher", "scale"))
    teacher = teacher if teacher is not None else tiny_pair(scale, seed)[0]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(seed)
    branches = factory(teacher=teacher, scale=scale, **kwargs)
    torch.manual_seed(seed)
    again = factory(teacher=teacher, scale=scale, **kwargs)
    assert isinstance(branches, dict) and branches, "a student constructor returns a non-empty dict of branches"
    assert all(isinstance(k, str) and isinstance(b, Branch) for k, b in branches.items()), "keys are names, values kdsr.Branch"
    assert any(b.trainable for b in branches.values()), "no trainable branch"
    assert set(again) == set(branches), "branch names differ between two builds"
    for key, value in teacher.state_dict().items():
        assert torch.equal(before[key], value), f"the constructor changed the teacher's {key}"
    x, (h, w) = _lr(lr_size, seed), lr_size
    for name, branch in branches.items():
        branch.model.eval()
        with torch.no_grad():
            y = branch(x)
            assert torch.equal(branch(x), y), f"branch {name}: forward is not deterministic"
            assert torch.equal(again[name].model.eval()(x, **again[name].kwargs), y), (
                f"branch {name}: two builds under one seed differ"
            )
        assert y.shape == (2, 3, h * scale, w * scale), f"branch {name}: LR {h}x{w} gave SR {tuple(y.shape)}"
        assert torch.isfinite(y).all(), f"branch {name}: non-finite output"
        total = sum(p.numel() for p in branch.model.parameters())
        counter = getattr(branch.model, "branch_params", None)
        if callable(counter):
            n = counter(**branch.kwargs)
            assert 0 < n <= total, f"branch {name}: branch_params = {n}, outside (0, {total}]"
        if branch.trainable:
            branch.model.train().zero_grad(set_to_none=True)
            branch(x).abs().mean().backward()
            assert any(p.grad is not None for p in branch.model.parameters()), f"branch {name}: no gradient"
            branch.model.zero_grad(set_to_none=True)
    return branches


DEFAULT_CHOICES = (Choice("full", 100, 1.0), Choice("half", 30, 0.5), Choice("quarter", 10, 0.25))


def check_policy(
    policy: Callable[..., Policy] | Policy,
    options: dict[str, Any] | None = None,
    *,
    choices: Sequence[Choice] = DEFAULT_CHOICES,
    sizes: Sequence[Size] = ((8, 8), (17, 23)),
    seed: int = 0,
) -> dict[str, str]:
    """A policy names one of the offered branches, deterministically; returns ``{"HxW": name}``."""
    if not isinstance(policy, Policy):
        policy = policy(**check_options(policy, "policy", options))
    assert isinstance(policy, Policy), f"the factory returned {type(policy).__name__}, not a kdsr.inference.Policy"
    names = {c.name for c in choices}
    picked: dict[str, str] = {}
    for h, w in sizes:
        lr = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
        name = policy.select(lr, list(choices))
        assert name in names, f"{h}x{w}: policy chose {name!r}, not one of {sorted(names)}"
        assert policy.select(lr, list(choices)) == name, f"{h}x{w}: policy is not deterministic"
        picked[f"{h}x{w}"] = name
    return picked
