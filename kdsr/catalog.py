"""The catalogue of known plugins (``kdsr plugins available``): one YAML entry per plugin.

Entries live in ``kdsr/catalog_entries/<name>.yaml`` so they ship inside the kdsr wheel (see
``registry/README.md``). Each is validated by ``CatalogEntry``; CI also checks that first-party
entries name exactly what their plugin registers.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from importlib import resources
from typing import Literal

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

from kdsr.errors import KdsrError

# The `--hook` vocabulary: a registration hook's name without "register_", e.g. losses -> register_losses.
Hook = Literal["backbones", "students", "losses", "policies", "datasets", "metrics", "degradations"]
PAPER = re.compile(r"(doi:10\.\d{4,9}/\S+|arXiv:\d{4}\.\d{4,5})")


class CatalogEntry(BaseModel):
    """One plugin in the catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="entry-point name (what `kdsr plugins list` shows)")
    package: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="pip distribution name")
    summary: str = Field(min_length=10, max_length=120, description="one line")
    provides: dict[Hook, list[str]] = Field(min_length=1, description="hook -> names it registers")
    papers: list[str] = Field(default_factory=list, description="'doi:10.xxxx/...' or 'arXiv:NNNN.NNNNN'")
    kdsr: str = Field(description="compatible kdsr versions, a PEP 440 specifier such as '>=0.1,<0.2'")
    license: str = Field(min_length=2, description="SPDX identifier")
    homepage: HttpUrl | None = Field(None, description="required unless the plugin ships in kdsr's repository")
    source: str | None = Field(None, pattern=r"^plugins/[a-z0-9-]+$", description="first-party: its folder in kdsr's repository")

    @model_validator(mode="after")
    def _where(self) -> CatalogEntry:
        if self.homepage is None and self.source is None:
            raise ValueError("give a homepage (or, for a first-party plugin, its source folder)")
        return self

    @property
    def first_party(self) -> bool:
        """Lives in kdsr's plugins/ folder; CI checks the entry against the installed plugin."""
        return self.source is not None

    @field_validator("provides")
    @classmethod
    def _names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for hook, names in value.items():
            if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"provides.{hook} must be a non-empty list of distinct names")
        return value

    @field_validator("papers")
    @classmethod
    def _papers(cls, value: list[str]) -> list[str]:
        for paper in value:
            if not PAPER.fullmatch(paper):
                raise ValueError(f"paper '{paper}' must look like 'doi:10.1109/CVPR.2021.00123' or 'arXiv:2103.12345'")
        return value

    @field_validator("kdsr")
    @classmethod
    def _specifier(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise ValueError(f"kdsr '{value}' is not a version specifier such as '>=0.1,<0.2'") from None
        return value

    def supports(self, kdsr_version: str) -> bool:
        """Whether this kdsr version is within the entry's ``kdsr`` specifier."""
        return SpecifierSet(self.kdsr).contains(kdsr_version, prereleases=True)

    def installed_version(self) -> str | None:
        """The installed distribution's version, or ``None``."""
        try:
            return md.version(self.package)
        except md.PackageNotFoundError:
            return None


def parse_entry(text: str, source: str) -> CatalogEntry:
    """One YAML entry, validated; errors are one line naming the file and the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KdsrError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        entry = CatalogEntry.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(entry)"
        raise KdsrError(f"{source}: {loc}: {err['msg'].removeprefix('Value error, ')}") from None
    stem = source.rsplit("/", 1)[-1].removesuffix(".yaml")
    if stem != entry.name:
        raise KdsrError(f"{source}: the file must be named after the entry, '{entry.name}.yaml'")
    return entry


def load_catalog() -> list[CatalogEntry]:
    """Every catalogue entry shipped with this kdsr, by name."""
    folder = resources.files("kdsr") / "catalog_entries"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    return [parse_entry(f.read_text(encoding="utf-8"), f"catalog_entries/{f.name}") for f in files]
