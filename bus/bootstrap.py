"""The composition root: builds civicbus's object graph from the environment and the config.

The API, the CLI, the relay and the workers all get their store, config and adapters here,
so there is one place where real (or test) dependencies are wired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from bus.config import Config, ConfigError, Environment, load_config
from bus.store import BadDatabaseUrl, NoSuchStore, Store


@dataclass
class Runtime:
    """What a civicbus process runs on; parts are built on first use."""

    env: Environment = field(default_factory=Environment.from_env)
    #: For commands that only look into a store: an SQLite file that is not there is an error
    #: (run from another folder, `sqlite:///civicbus.db` is a new, empty store, where they
    #: would find nothing wrong), not a store to create.
    existing_store: bool = False

    @cached_property
    def config(self) -> Config:
        return load_config(self.env.config_path)

    @property
    def config_dir(self) -> Path:
        """The config file's folder: relative paths in the config (mapping files) start here."""
        return Path(self.env.config_path).resolve().parent

    @cached_property
    def store(self) -> Store:
        try:
            return Store.open(self.env.database_url, existing=self.existing_store)
        except BadDatabaseUrl as exc:
            raise ConfigError(f"CIVICBUS_DATABASE_URL: {exc}") from exc
        except NoSuchStore as exc:
            raise ConfigError(
                f"{exc}; CIVICBUS_DATABASE_URL names the store civicbus runs on"
            ) from exc

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
