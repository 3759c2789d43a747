"""Finding adapter kinds by entry point, and building configured instances."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from adapters import registry
from adapters.mapping import Mapping, MappingFileError
from adapters.memory import MemoryAdapter
from adapters.registry import (
    KindNotInstalled,
    KindNotLoadable,
    MappingMismatch,
    available_kinds,
    build_adapter,
    load_kind,
)
from bus.adapters_glue import build_adapter as build_from_config
from bus.config import ConfigError, InstanceConfig

MEMORY_MAPPING = "adapter: memory\nfields:\n  Text: {from: description}\n"


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, **targets: str) -> None:
    # The installed distribution's entry points are fixed; extra kinds are faked at the lookup.
    real = registry._entry_points()
    fake = {
        name: EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)
        for name, value in targets.items()
    }
    monkeypatch.setattr(registry, "_entry_points", lambda: {**real, **fake})


def test_the_memory_kind_is_installed_through_its_entry_point() -> None:
    kinds = available_kinds()
    assert kinds["memory"].ok and kinds["memory"].adapter is MemoryAdapter
    assert load_kind("memory") is MemoryAdapter


def test_a_kind_that_cannot_load_is_reported_without_hiding_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_entry_points(
        monkeypatch, ghost="adapters.no_such_module:Ghost", wrong="schemas.model:Status"
    )
    kinds = available_kinds()
    assert kinds["memory"].ok
    assert not kinds["ghost"].ok and "No module named 'adapters.no_such_module'" in str(
        kinds["ghost"].error
    )
    assert "not a subclass of adapters.Adapter" in str(kinds["wrong"].error)
    with pytest.raises(KindNotLoadable, match="ghost"):
        load_kind("ghost")


def test_an_unknown_kind_names_the_installed_ones() -> None:
    with pytest.raises(
        KindNotInstalled, match=r"'nosuch' is not installed \(installed kinds: .*memory"
    ):
        load_kind("nosuch")


def test_build_adapter_loads_and_checks_the_mapping(tmp_path: Path) -> None:
    path = tmp_path / "memory.yaml"
    path.write_text(MEMORY_MAPPING)
    adapter = build_adapter(
        "m1", kind="memory", settings={"backend": "registry-test"}, mapping_path=path
    )
    assert isinstance(adapter, MemoryAdapter) and isinstance(adapter.mapping, Mapping)
    assert adapter.instance == "m1"

    path.write_text(MEMORY_MAPPING.replace("adapter: memory", "adapter: sap"))
    with pytest.raises(MappingMismatch, match="mapping is for adapter kind 'sap'"):
        build_adapter("m1", kind="memory", settings={}, mapping_path=path)

    path.write_text(MEMORY_MAPPING + "  Bad: {from: x, truncate: 0}\n")
    with pytest.raises(MappingFileError, match=r"memory.yaml:4: fields.Bad.truncate"):
        build_adapter("m1", kind="memory", settings={}, mapping_path=path)


def test_build_from_config_resolves_secrets_and_relative_mapping_paths(tmp_path: Path) -> None:
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "m.yaml").write_text(MEMORY_MAPPING)
    cfg = InstanceConfig(
        kind="memory",
        mapping="mappings/m.yaml",
        settings={"backend": "registry-glue-test"},
        secrets={"password": "CIVICBUS_TEST_MEMORY_PASSWORD"},
    )
    with pytest.raises(ConfigError, match=r"'m2'.*CIVICBUS_TEST_MEMORY_PASSWORD"):
        build_from_config("m2", cfg, tmp_path, env={})
    adapter = build_from_config("m2", cfg, tmp_path, env={"CIVICBUS_TEST_MEMORY_PASSWORD": "pw"})
    assert adapter.settings["password"] == "pw"
    assert isinstance(adapter.mapping, Mapping)


class NeedsFields(MemoryAdapter):
    mapping_fields = frozenset({"Text", "Priority"})


def test_a_mapping_without_a_field_the_kind_needs_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_entry_points(monkeypatch, strict=f"{__name__}:NeedsFields")
    path = tmp_path / "strict.yaml"
    path.write_text(MEMORY_MAPPING.replace("adapter: memory", "adapter: strict"))
    with pytest.raises(MappingMismatch, match=r"missing mapping field\(s\) Priority"):
        build_adapter("s1", kind="strict", settings={}, mapping_path=path)
    with pytest.raises(MappingMismatch, match="needs a mapping file"):
        build_adapter("s1", kind="strict", settings={}, mapping_path=None)
