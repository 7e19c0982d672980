"""Plugin discovery: builtins plus the ``kdsr`` entry-point group, one plugin at a time.

A plugin that fails to import or raises while registering is recorded as failed (``kdsr plugins
list`` shows the error) and the others keep working. Environment switches for a reproducible set:

* ``KDSR_PLUGINS=a,b`` loads only these external plugins;
* ``KDSR_DISABLE_PLUGINS=a,b`` skips these (``*`` skips every external plugin).

A plugin module may declare the plugin-API version(s) it was written for, ``KDSR_PLUGIN_API = 1``
or ``KDSR_PLUGIN_API = (1, 2)``; one that does not include ``kdsr.PLUGIN_API`` is refused with a
one-line error (listed as failed) instead of breaking later. Declaring nothing means "any API".
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from kdsr import hookspecs
from kdsr.errors import KdsrError
from kdsr.registry import Registry

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
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # pluggy validation error, name clash, ...
            info.error = f"{type(exc).__name__}: {exc}"
            return info
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
        except Exception as exc:
            for registry, reg_name in added:  # roll back a half-registered plugin
                registry._entries.pop(reg_name, None)
            info.provides.clear()
            self.pm.unregister(module)
            info.error = str(exc) if isinstance(exc, KdsrError) else f"{type(exc).__name__}: {exc}"
        return info

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
                try:
                    module = ep.load()
                except Exception as exc:
                    self.info[ep.name] = PluginInfo(ep.name, version, False, f"{type(exc).__name__}: {exc}")
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
