"""Finding adapter kinds: the `civicbus.adapters` entry-point group, built-ins and plug-ins alike.

A kind that is declared but cannot be imported (a missing optional dependency, a module not
written yet) is reported with its reason; it never stops the other kinds from loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import structlog

from adapters._contract import Adapter
from adapters.mapping import Mapping as FieldMapping
from adapters.mapping import load_mapping

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "civicbus.adapters"


class RegistryError(Exception):
    """An adapter instance cannot be built; the message says what to do."""


class KindNotInstalled(RegistryError):
    """No installed package registers this kind."""


class KindNotLoadable(RegistryError):
    """The kind is registered, but its class cannot be imported or is not an Adapter."""


class MappingMismatch(RegistryError):
    """The instance's mapping file is missing, or was written for another kind."""


@dataclass(frozen=True)
class Kind:
    """One registered adapter kind: where it points, and the class or why it failed to load."""

    name: str
    target: str
    adapter: type[Adapter] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.adapter is not None


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load(ep: EntryPoint) -> type[Adapter]:
    try:
        loaded = ep.load()
    except Exception as exc:  # any import-time failure of a plug-in is reported, not raised
        raise KindNotLoadable(
            f"adapter kind {ep.name!r} ({ep.value}) cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Adapter)):
        raise KindNotLoadable(
            f"adapter kind {ep.name!r} ({ep.value}) is not a subclass of adapters.Adapter"
        )
    return loaded


def available_kinds() -> dict[str, Kind]:
    """Every registered kind by name, each loaded or carrying the reason it could not be."""
    kinds: dict[str, Kind] = {}
    for name, ep in sorted(_entry_points().items()):
        try:
            kinds[name] = Kind(name, ep.value, adapter=_load(ep))
        except KindNotLoadable as exc:
            kinds[name] = Kind(name, ep.value, error=str(exc))
    return kinds


def load_kind(kind: str) -> type[Adapter]:
    """The adapter class registered as `kind`; KindNotInstalled or KindNotLoadable otherwise."""
    eps = _entry_points()
    ep = eps.get(kind)
    if ep is None:
        known = ", ".join(sorted(eps)) or "none"
        raise KindNotInstalled(
            f"adapter kind {kind!r} is not installed (installed kinds: {known}); install the "
            f"package that provides it, or fix the kind in the config"
        )
    return _load(ep)


def load_instance_mapping(
    kind: str, mapping_path: Path, required: frozenset[str] = frozenset()
) -> FieldMapping:
    """Load and validate a mapping file, written for `kind` and defining the `required` fields."""
    mapping = load_mapping(mapping_path)
    if mapping.adapter != kind:
        raise MappingMismatch(
            f"{mapping_path}: the mapping is for adapter kind {mapping.adapter!r}, "
            f"but the instance is of kind {kind!r}"
        )
    missing = sorted(required - set(mapping.field_names))
    if missing:
        raise MappingMismatch(
            f"{mapping_path}: missing mapping field(s) {', '.join(missing)}, which the {kind} "
            f"back-end needs; add them under fields"
        )
    return mapping


def load_kind_and_mapping(
    instance: str, kind: str, mapping_path: Path | None
) -> tuple[type[Adapter], FieldMapping | None]:
    """An instance's adapter class and its validated mapping (None when it has none), without
    building the adapter: what `build_adapter` starts with, and all an offline check needs.
    Raises RegistryError or MappingFileError as build_adapter does."""
    cls = load_kind(kind)
    if mapping_path is None and cls.mapping_fields:
        raise MappingMismatch(
            f"adapter instance {instance!r} of kind {kind!r} needs a mapping file "
            f"(set `mapping:` in its config)"
        )
    mapping = (
        load_instance_mapping(kind, mapping_path, cls.mapping_fields)
        if mapping_path is not None
        else None
    )
    return cls, mapping


def build_adapter(
    instance: str,
    *,
    kind: str,
    settings: Mapping[str, Any],
    mapping_path: Path | None,
    public_base_url: str | None = None,
) -> Adapter:
    """Construct one adapter instance: load its kind, load and validate its mapping, build it.

    `settings` must already hold the secrets (resolved from the environment by the caller).
    `public_base_url` (the deployment's Open311 API) gives mapping paths `links.open311`.
    Raises RegistryError or MappingFileError with a message an integrator can act on.
    """
    cls, mapping = load_kind_and_mapping(instance, kind, mapping_path)
    if mapping is not None and public_base_url:
        mapping = replace(mapping, public_base_url=public_base_url)
    adapter = cls(instance, settings, mapping)
    log.info("adapter.built", instance=instance, kind=kind, mapping=str(mapping_path or ""))
    return adapter
