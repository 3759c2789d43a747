"""The composition root: builds civicbus's object graph from the environment and the config.

The API, the CLI, the relay and the workers all get their store, config and adapters here,
so there is one place where real (or test) dependencies are wired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from bus.config import Config, Environment, load_config
from bus.store import Store


@dataclass
class Runtime:
    """What a civicbus process runs on; parts are built on first use."""

    env: Environment = field(default_factory=Environment.from_env)

    @cached_property
    def config(self) -> Config:
        return load_config(self.env.config_path)

    @property
    def config_dir(self) -> Path:
        """The config file's folder: relative paths in the config (mapping files) start here."""
        return Path(self.env.config_path).resolve().parent

    @cached_property
    def store(self) -> Store:
        return Store.open(self.env.database_url)

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
