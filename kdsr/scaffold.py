"""``kdsr plugins new``: write a ready-to-install plugin package from the templates in ``kdsr/templates``.

The package has a pyproject with the ``kdsr`` entry point, one working example (a distillation loss
or a backbone) registered by a hookimpl, tests built on ``kdsr.testing``, an example config and a
README; it passes its own tests as generated.
"""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path
from string import Template

from kdsr.errors import KdsrError

HOOKS = {  # --hook value -> (what the example is, its class-name suffix, summary line)
    "losses": ("loss", "Loss", "Attention-map distillation loss"),
    "backbones": ("backbone", "Net", "A small residual SR network"),
}
RESERVED = {"kdsr", "torch", "nn", "annotations"}  # names the generated module imports
CONFIG_NOTES = {
    "losses": "distils a small EDSR teacher into a thinner student with the new loss (it needs kdsr-plugin-zoo for `edsr_baseline`).",
    "backbones": "trains the new backbone with L1.",
}


def plugin_names(name: str) -> dict[str, str]:
    """``attention`` or ``kdsr-attention`` -> entry-point/registered name, distribution and module."""
    base = re.sub(r"^kdsr[-_]", "", name.strip().lower())
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", base):
        raise KdsrError(f"plugin name '{name}' must start with a letter and use only a-z, 0-9, '-' and '_'")
    short = base.replace("-", "_")
    if keyword.iskeyword(short) or short in RESERVED:
        raise KdsrError(f"plugin name '{name}' would shadow '{short}' in the generated module; choose another name")
    return {
        "name": short,
        "dist": f"kdsr-{base.replace('_', '-')}",
        "module": f"kdsr_{short}",
        "Class": "".join(part.capitalize() for part in short.split("_")),
    }


def new_plugin(name: str, hook: str = "losses", parent: Path = Path(".")) -> Path:
    """Write the plugin package into ``parent/<dist>`` and return its folder."""
    import kdsr

    if hook not in HOOKS:
        raise KdsrError(f"--hook '{hook}' is not supported by `kdsr plugins new`; choose one of: {', '.join(HOOKS)}")
    names = plugin_names(name)
    kind, suffix, summary = HOOKS[hook]
    names["Class"] = names["Class"].removesuffix(suffix) + suffix
    values = {
        **names,
        "kind": kind,
        "hook": hook,
        "summary": summary,
        "api": str(kdsr.PLUGIN_API),
        "kdsr_version": kdsr.__version__,
        "config_note": CONFIG_NOTES[hook],
    }
    root = Path(parent) / names["dist"]
    if root.exists():
        raise KdsrError(f"'{root}' already exists; choose another name or --dir")
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"{names['module']}/__init__.py": f"{hook}.init.py.tmpl",
        f"tests/test_{names['module']}.py": f"{hook}.test.py.tmpl",
        "configs/example.yaml": f"{hook}.example.yaml.tmpl",
    }
    templates = resources.files("kdsr") / "templates" / "plugin"
    for target, source in files.items():
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(templates.joinpath(source).read_text()).substitute(values))
    return root
