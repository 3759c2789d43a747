"""`civicbus config check [FILE]`: the city's config and every mapping it names, checked
offline (no store, no broker, no back-end), before a restart puts them to use."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from adapters.mapping import MappingFileError
from adapters.registry import RegistryError, load_kind_and_mapping
from bus.adapters_glue import mapping_path
from bus.cli import command_group
from bus.config import Config, ConfigError, Environment, InstanceConfig, load_config


def register(app: typer.Typer) -> None:
    group = command_group(help="The city's config file.", no_args_is_help=True)
    app.add_typer(group, name="config")

    @group.command("check")
    def check(
        file: Path = typer.Argument(
            None,
            metavar="[FILE]",
            help="The config (default: $CIVICBUS_CONFIG).",
            show_default=False,
        ),
    ) -> None:
        """Check the config and each instance's kind and mapping file; exit 2 on a problem.
        Secrets are not read: an environment variable not set here is a note, as the parts may
        run elsewhere."""
        path = file or Path(Environment.from_env().config_path)
        try:
            config = load_config(path)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        lines: list[str] = []
        problems: list[str] = []
        notes: list[str] = []
        for name, cfg in config.instances.items():
            verdict = _instance(name, cfg, path.parent.resolve())
            (lines if verdict.startswith("ok") else problems).append(f"  {name:<20} {verdict}")
            notes += [
                f"  {name}: secret {setting} comes from ${variable}, which is not set here"
                for setting, variable in cfg.secrets.items()
                if not os.environ.get(variable)
            ]
        typer.echo(f"{path}: {_summary(config)}")
        for line in lines:
            typer.echo(line)
        if notes:
            typer.echo("notes:")
            for note in notes:
                typer.echo(note)
        if problems:
            typer.echo("problems:", err=True)
            for problem in problems:
                typer.echo(problem, err=True)
            raise typer.Exit(2)


def _summary(config: Config) -> str:
    return (
        f"{len(config.jurisdictions)} jurisdiction(s), {len(config.services)} service(s), "
        f"{len(config.routing.rules)} routing rule(s) (default: {config.routing.default}), "
        f"{len(config.instances)} adapter instance(s)"
    )


def _instance(name: str, cfg: InstanceConfig, base_dir: Path) -> str:
    """`ok ...` with what the instance's mapping holds, or what is wrong with it."""
    where = mapping_path(cfg, base_dir)
    try:
        _, mapping = load_kind_and_mapping(name, cfg.kind, where)
    except (RegistryError, MappingFileError) as exc:
        return str(exc).replace("\n", "\n      ")
    if where is None or mapping is None:
        return f"ok: kind {cfg.kind}, no mapping"
    return (
        f"ok: kind {cfg.kind}, {where.resolve()} ({len(mapping.rules)} fields, "
        f"{len(mapping.statuses)} status codes)"
    )
