"""Name -> factory tables, one per hook kind, filled by plugins (timm-style ``create``).

A factory's typed keyword arguments are its options: ``Registry.create(name, options)``
validates the options against the signature (pydantic, unknown keys rejected) and calls it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import pydantic

from kdsr.errors import KdsrError, PluginError, did_you_mean


@dataclass
class Entry:
    """One registered thing: who provided it and how to build it."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    reserved: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def option_fields(self) -> dict[str, inspect.Parameter]:
        """The factory's keyword arguments that a config may set."""
        params = inspect.signature(self.factory).parameters
        return {
            n: p
            for n, p in params.items()
            if n not in self.reserved and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def options_model(self) -> type[pydantic.BaseModel]:
        fields: dict[str, Any] = {}
        hints = _type_hints(self.factory)
        for n, p in self.option_fields().items():
            ann = hints.get(n, Any)
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[n] = (ann, default)
        return pydantic.create_model(  # type: ignore[call-overload]
            f"{self.name}_options",
            __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            **fields,
        )

    def validate(self, options: dict[str, Any] | None, where: str) -> dict[str, Any]:
        """Options checked against the factory signature, defaults filled in."""
        options = dict(options or {})
        known = self.option_fields()
        for key in options:
            if key not in known:
                raise KdsrError(
                    f"{where}: unknown option '{key}' for {self.kind_label} '{self.name}'"
                    f"{did_you_mean(key, known)}; known options: {', '.join(known) or 'none'}"
                )
        try:
            model = self.options_model().model_validate(options)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise KdsrError(
                f"{where}.{loc}: {err['msg']} (got {err.get('input')!r}) for {self.kind_label} '{self.name}'"
            ) from None
        return {n: getattr(model, n) for n in known}

    @property
    def kind_label(self) -> str:
        return self.extra.get("_kind", "plugin")


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        import typing

        return typing.get_type_hints(fn, include_extras=True)  # keep Annotated bounds (kdsr.bounds)
    except Exception:  # unresolvable forward refs: fall back to untyped options
        return {}


class Registry:
    """Everything of one kind (backbone, loss, ...) that the loaded plugins provide."""

    def __init__(self, kind: str, reserved: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.reserved = reserved
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, factory: Callable[..., Any], plugin: str, **extra: Any) -> None:
        if not isinstance(name, str) or not name:
            raise KdsrError(f"plugin '{plugin}' registered a {self.kind} with an invalid name {name!r}")
        if name in self._entries:
            other = self._entries[name].plugin
            raise KdsrError(
                f"{self.kind} '{name}' is registered by both plugin '{other}' and plugin '{plugin}'; "
                f"uninstall or disable one of them (KDSR_DISABLE_PLUGINS={plugin})"
            )
        self._entries[name] = Entry(name, factory, plugin, self.reserved, {**extra, "_kind": self.kind})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, where: str = "config") -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KdsrError(
                f"{where}: unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"available: {', '.join(self.names()) or 'none'} (see `kdsr plugins list`)"
            ) from None

    def create(self, name: str, options: dict[str, Any] | None = None, where: str = "config", **reserved: Any) -> Any:
        """Build ``name`` with validated ``options``; ``reserved`` are the engine-supplied arguments."""
        entry = self.get(name, where)
        kwargs = entry.validate(options, where)
        try:
            return entry.factory(**reserved, **kwargs)
        except KdsrError:
            raise
        except ValueError as exc:  # factories reject bad option combinations with ValueError
            raise KdsrError(f"{where}: {self.kind} '{name}': {exc}") from None
        except Exception as exc:  # a bug in the plugin: name it instead of a traceback
            raise PluginError(
                f"{where}: {self.kind} '{name}' of plugin '{entry.plugin}' raised {describe_exception(exc)} when built; "
                f"fix the plugin or disable it (KDSR_DISABLE_PLUGINS={entry.plugin})"
            ) from exc

    def create_inner(self, name: str, options: dict[str, Any] | None = None, name_key: str = "backbone", options_key: str = "options", **reserved: Any) -> Any:
        """Build ``name`` inside another factory that takes it as its ``name_key`` option, with
        ``options_key`` options (e.g. a student constructor's inner backbone).

        A bad name or option is raised as ``ValueError`` with its path inside the outer factory's options
        (``options.n_feats: ...``), so the outer :meth:`create` reports it under the config entry it is
        about (``stages[1].student.options: student 'hkdsr': options.n_feats: ...``); a bug in the inner
        entry's plugin stays a :class:`PluginError`, which names it."""
        try:
            self.get(name, name_key)
            return self.create(name, options, options_key, **reserved)
        except PluginError:
            raise
        except KdsrError as exc:
            raise ValueError(str(exc)) from None


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone when it has none), for one-line errors."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
