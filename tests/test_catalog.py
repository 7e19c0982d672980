"""The plugin catalogue (schema, first-party entries vs what the plugins register, `plugins available`)
and plugin-API compatibility."""

from __future__ import annotations

import importlib.metadata as md
import json
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

import kdsr
from kdsr.catalog import load_catalog, parse_entry
from kdsr.errors import KdsrError
from kdsr.plugins import KINDS, Plugins, api_mismatch
from tests.conftest import ROOT, install_fake, run_kdsr

CATALOG = {e.name: e for e in load_catalog()}
FIRST_PARTY = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
HOOK_TO_KIND = {hook.removeprefix("register_"): kind for hook, (kind, _) in KINDS.items()}

GOOD = """
name: attention
package: kdsr-attention
summary: Attention-transfer distillation loss
provides: {losses: [attention_transfer]}
papers: [arXiv:1612.03928]
kdsr: ">=0.1,<0.2"
license: MIT
homepage: https://example.org/kdsr-attention
"""


# ---------------------------------------------------------------- schema


def test_shipped_entries_are_valid() -> None:
    assert {"zoo", "csd", "facd", "hkdsr"} <= set(CATALOG)
    for entry in CATALOG.values():
        assert entry.supports(kdsr.__version__), f"{entry.name}: kdsr{entry.kdsr} excludes this kdsr {kdsr.__version__}"


def test_a_good_entry_parses() -> None:
    entry = parse_entry(GOOD, "attention.yaml")
    assert entry.provides == {"losses": ["attention_transfer"]} and not entry.first_party
    assert entry.supports("0.1.3") and not entry.supports("0.2.0")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("license: MIT", "license: MIT\nlicence: MIT"), "licence: Extra inputs are not permitted"),
        (("{losses:", "{loss:"), "provides.loss.\\[key\\]: Input should be 'backbones', "),
        (("[attention_transfer]", "[]"), "provides: provides.losses must be a non-empty list"),
        (("arXiv:1612.03928", "arxiv 1612.03928"), "papers: paper 'arxiv 1612.03928' must look like"),
        ((">=0.1,<0.2", "0.1+"), "kdsr: kdsr '0.1\\+' is not a version specifier"),
        (("homepage: https://example.org/kdsr-attention", ""), "give a homepage"),
        (("name: attention", "name: Attention"), "name: String should match pattern"),
        (("summary: Attention-transfer distillation loss", "summary: x"), "summary: String should have at least 10"),
        (("provides: {", "provides: ["), "not valid YAML"),
    ],
)
def test_malformed_entries_fail_with_one_line(change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(KdsrError, match=message) as err:
        parse_entry(text, "attention.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("attention.yaml: ")


def test_entry_file_is_named_after_the_plugin() -> None:
    with pytest.raises(KdsrError, match="must be named after the entry, 'attention.yaml'"):
        parse_entry(GOOD, "catalog_entries/attn.yaml")


def test_catalogue_and_templates_ship_in_the_wheel() -> None:
    """Every data file kdsr reads at run time matches a package-data glob of pyproject.toml."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kdsr"]
    package = ROOT / "kdsr"
    files = [*(package / "catalog_entries").iterdir(), *(package / "templates").rglob("*.*")]
    unshipped = [f for f in files if f.is_file() and not any(fnmatch(f.relative_to(package).as_posix(), g) for g in globs)]
    assert files and not unshipped


# ---------------------------------------------------------------- first-party entries vs the plugins


@pytest.mark.parametrize("folder", FIRST_PARTY, ids=lambda p: p.name)
def test_every_first_party_plugin_is_catalogued(folder: Path) -> None:
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    (name,) = project["entry-points"]["kdsr"]
    entry = CATALOG.get(name)
    assert entry is not None, f"add kdsr/catalog_entries/{name}.yaml for {folder.relative_to(ROOT)}"
    assert entry.package == project["name"] and entry.source == folder.relative_to(ROOT).as_posix()
    assert entry.license == project["license"]["text"]


@pytest.mark.parametrize("folder", FIRST_PARTY, ids=lambda p: p.name)
def test_every_first_party_plugin_declares_this_plugin_api(folder: Path) -> None:
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    (module,) = project["entry-points"]["kdsr"].values()
    source = (folder / module.replace(".", "/") / "__init__.py").read_text()
    assert f"KDSR_PLUGIN_API = {kdsr.PLUGIN_API}" in source


@pytest.mark.parametrize("name", sorted(n for n, e in CATALOG.items() if e.first_party))
def test_first_party_entry_matches_what_the_plugin_registers(name: str) -> None:
    points = [ep for ep in md.entry_points(group="kdsr") if ep.name == name]
    if not points:
        pytest.skip(f"plugin '{name}' is not installed")
    info = Plugins().add(points[0].load(), name)
    assert info.ok, info.error
    registered = {hook: sorted(info.provides[kind]) for hook, kind in HOOK_TO_KIND.items() if info.provides.get(kind)}
    catalogued = {hook: sorted(names) for hook, names in CATALOG[name].provides.items()}
    if registered != catalogued:
        fix = "{" + ", ".join(f"{h}: [{', '.join(n)}]" for h, n in registered.items()) + "}"
        pytest.fail(f"kdsr/catalog_entries/{name}.yaml disagrees with the installed plugin; set  provides: {fix}")


# ---------------------------------------------------------------- `kdsr plugins available`


def test_plugins_available_marks_installed_and_filters_by_hook() -> None:
    out = run_kdsr("plugins", "available", "--hook", "backbones", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert "zoo" in rows and all("backbones" in r["provides"] for r in rows.values())
    assert rows["zoo"]["installed"] == md.version("kdsr-plugin-zoo") and rows["zoo"]["compatible"]
    text = run_kdsr("plugins", "available")
    assert f"zoo        [installed {md.version('kdsr-plugin-zoo')}]" in text.stdout
    bad = run_kdsr("plugins", "available", "--hook", "loss")
    assert bad.returncode == 2 and "did you mean 'losses'" in bad.stderr


# ---------------------------------------------------------------- plugin-API compatibility


class _Declares:
    def __init__(self, api: object) -> None:
        self.KDSR_PLUGIN_API = api


@pytest.mark.parametrize("api", [kdsr.PLUGIN_API, (kdsr.PLUGIN_API, kdsr.PLUGIN_API + 1), range(1, kdsr.PLUGIN_API + 1)])
def test_compatible_or_undeclared_api_is_accepted(api: object) -> None:
    assert api_mismatch(_Declares(api), "p") is None
    assert api_mismatch(object(), "p") is None  # declaring nothing means any API


def test_incompatible_or_malformed_api_is_refused() -> None:
    error = api_mismatch(_Declares(kdsr.PLUGIN_API + 1), "future")
    assert error == (
        f"plugin 'future' targets kdsr plugin API {kdsr.PLUGIN_API + 1} but kdsr {kdsr.__version__} provides API "
        f"{kdsr.PLUGIN_API}; install a release of the plugin built for API {kdsr.PLUGIN_API} (or a kdsr that provides API {kdsr.PLUGIN_API + 1})"
    )
    assert "expected an int or a tuple of ints" in api_mismatch(_Declares("1"), "p")


def test_incompatible_plugin_is_listed_as_failed_and_the_rest_works(tmp_path: Path) -> None:
    site = tmp_path / "site"
    future = f"import kdsr\nKDSR_PLUGIN_API = {kdsr.PLUGIN_API + 1}\n\n@kdsr.hookimpl\ndef register_losses(register):\n    register('future_loss', None)\n"
    install_fake(site, "kdsr-future", "future_plugin", future, entry="future", version="2.0")
    current = f"import kdsr\nKDSR_PLUGIN_API = {kdsr.PLUGIN_API}\n"
    install_fake(site, "kdsr-current", "current_plugin", current, entry="current", version="1.5")
    env = {"PYTHONPATH": str(site)}
    out = run_kdsr("plugins", "list", env=env)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("future"))
    assert line.startswith("future (2.0): FAILED: plugin 'future' targets kdsr plugin API 2 but kdsr")
    assert "future_loss" not in out.stdout and "zoo (" in out.stdout and "current (1.5)" in out.stdout
    req = run_kdsr("plugins", "list", "--requirements", env=env).stdout.splitlines()
    assert "kdsr-current==1.5" in req and not any("future" in r for r in req)
    assert f"kdsr-plugin-zoo=={md.version('kdsr-plugin-zoo')}" in req  # distribution names, not entry points
