"""Run configuration: YAML (safe: ``ConfigLoader``, a ``yaml.SafeLoader``) -> validated, typed config.

Every error names the key path, the bad value and the fix. Plugin options (``options:`` under a
backbone, loss, dataset, ...) are checked against the plugin's own factory signature by
``kdsr.registry`` when the run is resolved (see ``kdsr.engine.build``).

Numbers are bounded so that a typo (``steps: 1e30``, ``seed: 2**70``) is refused here rather than
crashing a run later; floats must be finite. YAML is read with ``ConfigLoader`` (``yaml.SafeLoader``
that also refuses duplicate keys); ``parse_value`` is the one parser of command-line values.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from kdsr.errors import KdsrError, did_you_mean


MAX_STEPS = 10**9  # counts of steps (steps, intervals, milestones): ~30 years at one step per second
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Pixels = Annotated[int, Field(ge=1, le=65536)]
MEMORY_SHARE = 0.5  # a training batch's own LR+HR tensors may take at most this share of the machine's RAM


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Plugged(Strict):
    """A named plugin thing plus its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class DatasetSpec(Plugged):
    """An image source; ``name`` is a registered dataset (folder, paired, samples, ...)."""

    label: str | None = None  # how the set is called in reports; default: name or folder name


class DataConfig(Strict):
    train: DatasetSpec = Field(default_factory=lambda: DatasetSpec(name="samples"))
    eval: list[DatasetSpec] = Field(default_factory=lambda: [DatasetSpec(name="samples")])
    degradation: Plugged = Field(default_factory=lambda: Plugged(name="bicubic"))
    patch_size: int = Field(48, ge=4, le=4096, description="LR patch side")
    batch_size: int = Field(16, ge=1, description="refused when it cannot fit in memory, see batch_bytes")
    augment: bool = True
    cache: bool = True


class ModelSpec(Strict):
    """A network: a registered backbone with options and optional weights, a self-describing weights file
    alone (a ``kdsr export`` / ``kdsr convert`` output: its metadata names backbone and options), or a
    branch of an earlier stage."""

    backbone: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None
    from_stage: str | None = None
    branch: str | None = None  # which branch of ``from_stage`` (default: its only/first trainable branch)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if self.backbone is not None and self.from_stage is not None:
            raise ValueError("give exactly one of 'backbone' (a registered network) or 'from_stage' (an earlier stage)")
        if self.backbone is None and self.from_stage is None and self.weights is None:
            raise ValueError(
                "give 'backbone' (a registered network), 'weights' (a file exported by kdsr) or 'from_stage' (an earlier stage)"
            )
        if self.backbone is None and self.options:
            raise ValueError("'options' need 'backbone'; a kdsr-exported 'weights' file brings its own options")
        if self.from_stage is not None and (self.options or self.weights):
            raise ValueError("'options'/'weights' do not apply with 'from_stage'; the stage's trained weights are used")
        return self


class StudentSpec(Strict):
    """Student branches: a registered constructor with its options.

    Shorthand: ``{backbone: NAME, options: {...}}`` means the ``independent`` constructor building
    that backbone.
    """

    constructor: str = "independent"
    options: dict[str, Any] = Field(default_factory=dict)
    init: ModelSpec | None = None  # optional weights to start from (same architecture)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "backbone" in data:
            data = dict(data)
            if "constructor" in data:
                raise ValueError("give either 'backbone' (an independent student) or 'constructor', not both")
            data["constructor"] = "independent"
            data["options"] = {"backbone": data.pop("backbone"), "options": data.get("options", {})}
        return data


class LossSpec(Plugged):
    weight: float = 1.0
    student: str = "student"  # branch the term trains
    teacher: str | None = None  # reference branch; default 'teacher' when the loss needs one
    label: str | None = None  # name in logs; default: loss name (+ branch when ambiguous)


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-4, gt=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(1e-8, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class SchedulerConfig(Strict):
    name: Literal["constant", "step", "multistep", "cosine"] = "constant"
    step_size: Steps = 200_000
    milestones: list[Steps] = Field(default_factory=list)
    gamma: float = Field(0.5, gt=0)
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    min_lr: float = Field(0.0, ge=0)


class StageConfig(Strict):
    name: str
    steps: int = Field(ge=0, le=MAX_STEPS, description="at least 1: a stage trains")
    teacher: ModelSpec | None = None
    student: StudentSpec
    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="l1")], min_length=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    grad_clip: float | None = Field(None, gt=0)
    ema: float | None = Field(None, gt=0, lt=1, description="EMA decay; EMA weights are evaluated and exported")
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    log_every: Steps = 10
    eval_every: int = Field(0, ge=0, le=MAX_STEPS, description="0: only at the end of the stage")
    checkpoint_every: Steps = 100

    @field_validator("steps")
    @classmethod
    def _trains(cls, steps: int) -> int:
        # steps: 0 would only score the initial weights, yet write them as the stage's trained result
        if steps == 0:
            raise ValueError("a stage must train at least 1 step (got 0); to score existing weights use `kdsr eval`")
        return steps

    @model_validator(mode="after")
    def _names(self) -> StageConfig:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ValueError(f"stage name '{self.name}' must use only letters, digits, '_' and '-'")
        return self


class MetricSpec(Plugged):
    """A metric with options; a bare name is the shorthand for no options (``metrics: [psnr, ssim]``).

    Results are reported under ``label``, by default the name plus every option that differs from the
    metric's default (``psnr[y_channel=false,shave=scale+6]``), so a table says which variant ran.
    """

    label: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_serializer(mode="wrap")
    def _short(self, handler: Any) -> Any:
        return self.name if not self.options and self.label is None else handler(self)


class EvalConfig(Strict):
    metrics: list[MetricSpec] = Field(default_factory=lambda: [MetricSpec(name="psnr"), MetricSpec(name="ssim")])
    bicubic: bool = True
    self_ensemble: bool = False
    teachers: bool = Field(True, description="score teachers loaded from weight files; false when many runs share one teacher scored once")


class ProfileConfig(Strict):
    hr_size: tuple[Pixels, Pixels] = (720, 1280)  # (H, W) of the SR output Multi-Adds are counted for
    latency: bool = True
    latency_repeats: int = Field(5, ge=1, le=10_000)
    latency_hr_size: tuple[Pixels, Pixels] = (720, 1280)


class RunConfig(Strict):
    name: str = "run"
    out_dir: Path | None = None  # default: runs/<name>
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what numpy, torch and python seeds all accept
    scale: int = Field(ge=1, le=8)
    device: str = "auto"
    threads: int | None = Field(None, ge=1, le=4096)
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[StageConfig] = Field(min_length=1)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    plugins: dict[str, str] = Field(default_factory=dict)  # recorded plugin versions (filled in on resolve)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # the run directory is runs/<name>: a path in the name would write elsewhere (out_dir is for that)
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name):
            raise ValueError(
                f"run name {name!r} must be a plain name (letters, digits, '_', '-', '.'; not empty, no path, "
                "not starting with '.'); set out_dir to choose the directory"
            )
        return name

    @model_validator(mode="after")
    def _fits_memory(self) -> RunConfig:
        need, have = batch_bytes(self.data, self.scale), total_memory()
        if have is not None and need > MEMORY_SHARE * have:
            raise ValueError(
                f"data.batch_size {self.data.batch_size} cannot fit in memory: its float32 LR+HR patches alone take "
                f"{need / 2**30:.1f} GiB, over {MEMORY_SHARE:.0%} of this machine's {have / 2**30:.1f} GiB; "
                "lower batch_size or patch_size"
            )
        return self

    @model_validator(mode="after")
    def _stage_refs(self) -> RunConfig:
        seen: list[str] = []
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"two stages are named '{stage.name}'; stage names must be unique")
            for spec in (stage.teacher, stage.student.init):
                if spec is not None and spec.from_stage is not None and spec.from_stage not in seen:
                    raise ValueError(
                        f"stage '{stage.name}' uses from_stage '{spec.from_stage}', which is not an earlier stage"
                        f"{did_you_mean(spec.from_stage, seen)}"
                    )
            seen.append(stage.name)
        return self

    @property
    def run_dir(self) -> Path:
        return self.out_dir if self.out_dir is not None else Path("runs") / self.name


def batch_bytes(data: DataConfig, scale: int) -> int:
    """Bytes of one training batch's float32 LR and HR patches (3 channels): the least a step holds.

    The rule for refusing a batch: if these tensors alone exceed ``MEMORY_SHARE`` of the machine's RAM,
    the step cannot run (the network's activations are many times larger still).
    """
    return data.batch_size * 3 * data.patch_size**2 * (1 + scale**2) * 4


def total_memory() -> int | None:
    """Physical RAM in bytes, or ``None`` where the OS does not say (the memory rule is then skipped)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


# ---------------------------------------------------------------- loading


def refuse_duplicate_keys(node: yaml.Node | None, seen_nodes: set[int] | None = None) -> None:
    """Refuse a mapping that holds one key twice (PyYAML keeps the last silently).

    Walks the composed node tree, before anything is constructed. Keys merged in with ``<<`` may be
    overridden, as YAML intends; only keys written twice in one mapping are refused. A node reached again
    through an alias is checked once (aliases may be recursive).
    """
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if node is None or id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(f"key '{key_node.value}' appears twice in one mapping (lines {seen[key]} and {line})")
                seen[key] = line
            refuse_duplicate_keys(value_node, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            refuse_duplicate_keys(item, seen_nodes)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping with a repeated key (raised by ``refuse_duplicate_keys``)."""


def load_yaml(text: str, source: str, hint: str = "") -> Any:
    """Plain data from YAML text (``yaml.safe_load``); any problem is a one-line ``KdsrError`` starting
    with ``source`` (``hint`` ends a syntax error's message)."""
    try:
        refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        return yaml.safe_load(text)
    except DuplicateKeyError as exc:
        raise KdsrError(f"{source}: {exc}; keep one of them") from None
    except yaml.YAMLError as exc:
        problem = _one_line(str(getattr(exc, "problem", None) or exc))
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            raise KdsrError(f"{source} uses a YAML tag kdsr refuses ({problem}); values are plain data, remove the tag") from None
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise KdsrError(f"{source} is not valid YAML{where}: {problem}{hint}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def parse_value(raw: str, source: str) -> Any:
    """A command-line value (``key=value`` override, ``--option``) parsed as YAML: ``1e-3``, ``[1, 2]``, ``false``.

    The one parser of such values; ``source`` names the argument in the error (e.g. ``--option 'x=[1'``).
    """
    return "" if raw == "" else load_yaml(raw, source, "; quote a value meant as text")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KdsrError(f"config file '{path}' does not exist; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KdsrError(f"config '{path}' is not UTF-8 text") from None
    data = load_yaml(text, f"config '{path}'")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KdsrError(f"config '{path}' must be a mapping of keys at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` overrides; values are parsed as YAML scalars/lists (``lr=1e-3``, ``x=[1,2]``)."""
    for item in overrides:
        if "=" not in item:
            raise KdsrError(f"override '{item}' must look like key.path=value (e.g. stages.0.steps=100)")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), parse_value(raw, f"override '{item}'"), item)
    return data


def _set_path(data: Any, key: str, value: Any, item: str) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise KdsrError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise KdsrError(f"override '{item}': '{'.'.join(parts[:i])}' is a value, not a section")


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate raw data; the first problem becomes a one-line KdsrError naming the key path."""
    try:
        return RunConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise KdsrError(f"{source}: {describe_error(exc, data)}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    data = apply_overrides(read_yaml(path), list(overrides or []))
    return parse_config(data, str(path))


def describe_error(exc: pydantic.ValidationError, data: Any) -> str:
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after"))]
    path = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent_model = _model_at(RunConfig, loc[:-1])
        known = list(parent_model.model_fields) if parent_model else []
        return f"unknown key '{path}'{did_you_mean(str(loc[-1]), known)}; allowed here: {', '.join(known)}"
    if kind == "missing":
        return f"missing required key '{path}'"
    msg = err["msg"].removeprefix("Value error, ")
    where = f"'{path}': " if path else ""
    if "input" in err and kind not in ("value_error",) and not isinstance(err["input"], dict):
        return f"{where}{msg} (got {err['input']!r})"
    return f"{where}{msg}"


def _model_at(model: type[BaseModel] | None, loc: list[Any]) -> type[BaseModel] | None:
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def dump_config(config: RunConfig) -> str:
    """YAML of the config with every default filled in."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
