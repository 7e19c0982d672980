"""Plugin discovery: builtins plus the ``kdsr`` entry-point group, one plugin at a time.

A plugin that fails to import or raises while registering is recorded as failed (``kdsr plugins
list`` shows the error) and the others keep working. "Raises" means any ``BaseException``: a plugin
calling ``sys.exit()`` or raising ``KeyboardInterrupt`` at import is isolated like any bug; only a
real Ctrl-C (SIGINT) that arrives meanwhile still interrupts kdsr (:func:`_user_interrupts` tells
them apart). A lifecycle hook (``before_step``, ``after_eval``, ...) that raises ``Exception`` or
``SystemExit`` during a run becomes a one-line :class:`PluginError` naming the plugin and the hook
(:func:`_guard`, applied to every hook implementation when the plugin is added); a
``KeyboardInterrupt`` there is indistinguishable from Ctrl-C and interrupts the run (its last
checkpoint is kept either way). Environment switches for a reproducible set:

* ``KDSR_PLUGINS=a,b`` loads only these external plugins;
* ``KDSR_DISABLE_PLUGINS=a,b`` skips these (``*`` skips every external plugin).

A plugin module may declare the plugin-API version(s) it was written for, ``KDSR_PLUGIN_API = 1``
or ``KDSR_PLUGIN_API = (1, 2)``; one that does not include ``kdsr.PLUGIN_API`` is refused with a
one-line error (listed as failed) instead of breaking later. Declaring nothing means "any API".
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata as md
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from kdsr import hookspecs
from kdsr.errors import KdsrError, PluginError
from kdsr.registry import Registry, describe_exception

GROUP = "kdsr"
BUILTINS = (
    "kdsr.builtin.losses",
    "kdsr.builtin.students",
    "kdsr.builtin.policies",
    "kdsr.builtin.datasets",
    "kdsr.builtin.metrics",
    "kdsr.builtin.degradations",
)
# hook name -> (registry kind, engine-supplied factory arguments)
KINDS = {
    "register_backbones": ("backbone", ("scale",)),
    "register_students": ("student", ("teacher", "scale")),
    "register_losses": ("loss", ()),
    "register_policies": ("policy", ()),
    "register_datasets": ("dataset", ()),
    "register_metrics": ("metric", ()),
    "register_degradations": ("degradation", ()),
}


@dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Plugins:
    """The loaded plugin set and the registries it filled."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("kdsr")
        self.pm.add_hookspecs(hookspecs)
        self.registries = {kind: Registry(kind, reserved) for kind, reserved in KINDS.values()}
        self.info: dict[str, PluginInfo] = {}

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def add(self, module: ModuleType | object, name: str, version: str = "", builtin: bool = False) -> PluginInfo:
        """Register one plugin object and run its registration hooks, isolating its failures."""
        info = PluginInfo(name, version, builtin)
        self.info[name] = info
        info.error = api_mismatch(module, name)
        if info.error:
            return info
        with _user_interrupts() as interrupted:
            try:
                self.pm.register(module, name=name)
            except BaseException as exc:  # pluggy validation error, name clash, ...
                info.error = _failure(exc, interrupted)
                return info
            self._register(module, info, interrupted)
        if info.ok:
            _guard_lifecycle_hooks(self.pm, module, name)
        return info

    def _register(self, module: object, info: PluginInfo, interrupted: list[int]) -> None:
        """Run the plugin's registration hooks; on any failure undo what it registered."""
        name = info.name
        added: list[tuple[Registry, str]] = []
        try:
            for hook_name, (kind, _) in KINDS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is not module:
                        continue
                    registry = self.registries[kind]

                    def register(reg_name: str, factory: Any, _r: Registry = registry, **extra: Any) -> None:
                        _r.add(reg_name, factory, name, **extra)
                        added.append((_r, reg_name))
                        info.provides.setdefault(_r.kind, []).append(reg_name)

                    impl.function(register=register)
        except BaseException as exc:
            for registry, reg_name in added:  # roll back a half-registered plugin
                registry._entries.pop(reg_name, None)
            info.provides.clear()
            self.pm.unregister(module)
            info.error = _failure(exc, interrupted)  # a real Ctrl-C propagates from here

    def load_builtins(self) -> None:
        import kdsr

        for modname in BUILTINS:
            self.add(importlib.import_module(modname), "builtin." + modname.rsplit(".", 1)[-1], kdsr.__version__, builtin=True)

    def load_entrypoints(self) -> None:
        only = _env_list("KDSR_PLUGINS")
        disabled = _env_list("KDSR_DISABLE_PLUGINS") or set()
        seen = set()
        for dist in md.distributions():
            for ep in dist.entry_points:
                if ep.group != GROUP or ep.name in seen:
                    continue
                seen.add(ep.name)
                if "*" in disabled or ep.name in disabled or (only is not None and ep.name not in only):
                    continue
                version = dist.version or ""
                with _user_interrupts() as interrupted:
                    try:
                        module = ep.load()
                    except BaseException as exc:  # sys.exit() and KeyboardInterrupt at import too
                        self.info[ep.name] = PluginInfo(ep.name, version, False, _failure(exc, interrupted))
                        continue
                self.add(module, ep.name, version)
        if only:
            missing = only - seen
            if missing:
                raise KdsrError(
                    f"KDSR_PLUGINS names plugins that are not installed: {', '.join(sorted(missing))}; "
                    f"install them or fix the variable"
                )

    def versions(self) -> dict[str, str]:
        """Loaded (not failed) plugins and their versions, for the run record."""
        return {n: i.version for n, i in sorted(self.info.items()) if i.ok}


_current: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    global _current
    if _current is None:
        plugins = Plugins()
        plugins.load_builtins()
        plugins.load_entrypoints()
        _current = plugins
    return _current


def reset_plugins() -> None:
    """Forget the loaded set (tests, or after installing a plugin in-process)."""
    global _current
    _current = None


def registry(kind: str) -> Registry:
    """Shortcut: the registry of one kind in the process-wide plugin set."""
    return get_plugins().registry(kind)


def api_mismatch(module: object, name: str) -> str | None:
    """Why a plugin's declared ``KDSR_PLUGIN_API`` rules it out for this kdsr, or ``None``."""
    import kdsr

    declared = getattr(module, "KDSR_PLUGIN_API", None)
    if declared is None:
        return None
    versions = (declared,) if isinstance(declared, int) else declared
    if not isinstance(versions, (tuple, list, set, frozenset, range)) or not all(isinstance(v, int) for v in versions):
        return f"plugin '{name}' declares KDSR_PLUGIN_API = {declared!r}; expected an int or a tuple of ints"
    if kdsr.PLUGIN_API in versions:
        return None
    wanted = ", ".join(str(v) for v in sorted(versions))
    return (
        f"plugin '{name}' targets kdsr plugin API {wanted} but kdsr {kdsr.__version__} provides API {kdsr.PLUGIN_API}; "
        f"install a release of the plugin built for API {kdsr.PLUGIN_API} (or a kdsr that provides API {wanted})"
    )


def _env_list(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


# hooks kdsr calls during a run (not the register_* ones, which run once in ``Plugins.add``)
LIFECYCLE_HOOKS = tuple(
    n for n in dir(hookspecs) if n not in KINDS and hasattr(getattr(hookspecs, n), hookspecs.hookspec.project_name + "_spec")
)


@contextlib.contextmanager
def _user_interrupts() -> Iterator[list[int]]:
    """While loading a plugin, note every SIGINT the user sends (the list it yields is non-empty
    after one), so a ``KeyboardInterrupt`` the plugin raises itself can be isolated while a real
    Ctrl-C still stops kdsr. Outside the main thread, or if SIGINT is ignored, nothing is installed."""
    seen: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield seen
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


def _failure(exc: BaseException, interrupted: list[int]) -> str:
    """The error recorded for a plugin that raised ``exc`` while loading; a real Ctrl-C propagates."""
    if isinstance(exc, KeyboardInterrupt) and interrupted:
        raise exc
    return str(exc) if isinstance(exc, KdsrError) else describe_exception(exc)


def _guard_lifecycle_hooks(pm: pluggy.PluginManager, module: object, plugin: str) -> None:
    """Wrap each lifecycle hook implementation of ``module`` in :func:`_guard` (one shared
    mechanism instead of a try/except at every call site, which could not tell which plugin failed)."""
    for hook_name in LIFECYCLE_HOOKS:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is module and not (impl.hookwrapper or impl.wrapper):
                impl.function = _guard(impl.function, plugin, hook_name)


def _guard(fn: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    """``fn`` raising turns into a one-line :class:`PluginError` naming ``plugin`` and ``hook``."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (Exception, SystemExit) as exc:
            raise PluginError(
                f"plugin '{plugin}' failed in its '{hook}' hook ({describe_exception(exc)}); "
                f"fix the plugin or disable it (KDSR_DISABLE_PLUGINS={plugin})"
            ) from exc

    return guarded
