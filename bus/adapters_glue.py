"""Building adapter instances from the city's config (the glue between bus.config and adapters).

`adapters/` knows nothing of `bus/`; this module hands it the plain pieces of an InstanceConfig.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from adapters import Adapter
from adapters.registry import build_adapter as _build
from bus.config import ConfigError, InstanceConfig


def mapping_path(cfg: InstanceConfig, base_dir: Path) -> Path | None:
    """The instance's mapping file; a relative path is taken from `base_dir` (the folder of the
    config file that names it, wherever civicbus is started from)."""
    if cfg.mapping is None:
        return None
    path = Path(cfg.mapping)
    return path if path.is_absolute() else base_dir / path


class BadSettings(ConfigError):
    """An adapter's constructor refused its instance's settings (a ValueError of its own)."""


def build_adapter(
    instance_name: str,
    cfg: InstanceConfig,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    public_base_url: str | None = None,
) -> Adapter:
    """Build one configured instance: secrets from `env` (default: os.environ), mapping validated;
    `public_base_url` (config `api.base_url`) gives mapping paths the request's public URL.

    Raises ConfigError for a missing secret, BadSettings (a ConfigError: the commands say it
    and exit 2) for settings the adapter refuses, and RegistryError or MappingFileError (from
    `adapters`) for a kind that is not installed or a mapping that does not validate.
    """
    try:
        settings = cfg.resolved_settings(env)
    except ConfigError as exc:
        raise ConfigError(f"adapter instance {instance_name!r}: {exc}") from exc
    try:
        return _build(
            instance_name,
            kind=cfg.kind,
            settings=settings,
            mapping_path=mapping_path(cfg, base_dir),
            public_base_url=public_base_url,
        )
    except ValueError as exc:  # adapters refuse their settings so (see adapters._contract)
        raise BadSettings(f"adapter instance {instance_name!r}: {exc}") from exc
