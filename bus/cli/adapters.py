"""`civicbus adapters list`, `check [INSTANCE]` and `retry-now INSTANCE`: what is there, what
works, and sending what waits in an instance's retry tiers to its worker now.

Relative mapping paths in the config start at the config file's folder, wherever civicbus is
started from; `list` shows them resolved, as the instances use them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import typer

from adapters import Health, PermanentError, TransientError
from adapters.mapping import MappingFileError
from adapters.registry import KindNotInstalled, RegistryError, available_kinds
from bus.adapters_glue import BadSettings, build_adapter, mapping_path
from bus.cli import command_group
from bus.cli.common import runtime
from bus.config import ConfigError, InstanceConfig


def register(app: typer.Typer) -> None:
    group = command_group(
        help="Adapter kinds installed, instances configured, and whether their back-ends answer.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="adapters")

    @group.command("list")
    def list_() -> None:
        """The adapter kinds installed (and why any cannot load), and the configured instances."""
        kinds = available_kinds()
        typer.echo("KINDS INSTALLED")
        for kind in kinds.values():
            state = "ok" if kind.ok else str(kind.error)
            typer.echo(f"  {kind.name:<12} {kind.target:<40} {state}")
        with runtime() as rt:
            instances = rt.config.instances
        typer.echo("")
        typer.echo("INSTANCES CONFIGURED")
        for name, cfg in instances.items():
            note = ""
            if cfg.kind not in kinds:
                note = "  (kind not installed)"
            elif not kinds[cfg.kind].ok:
                note = "  (kind cannot load, see above)"
            path = mapping_path(cfg, rt.config_dir)
            mapping = str(path.resolve()) if path else "(no mapping)"
            typer.echo(f"  {name:<20} {cfg.kind:<10} {mapping}{note}")
        if not instances:
            typer.echo("  (none)")

    @group.command("check")
    def check(
        instance: str = typer.Argument(None, metavar="[INSTANCE]", show_default=False),
    ) -> None:
        """Build each instance and run its check(); say what is wrong in words to act on."""
        with runtime() as rt:
            instances = rt.config.instances
        if instance is not None:
            if instance not in instances:
                known = ", ".join(sorted(instances)) or "none"
                typer.echo(
                    f"error: no adapter instance {instance!r} (configured: {known})", err=True
                )
                raise typer.Exit(2)
            instances = {instance: instances[instance]}
        failures = 0
        for name, cfg in instances.items():
            ok, verdict = check_instance(name, cfg, rt.config_dir)
            failures += not ok
            typer.echo(f"{name}: {'ok' if ok else 'FAIL'}: {verdict}")
        if failures:
            raise typer.Exit(1)

    _retry_now_command(group)


def _retry_now_command(group: typer.Typer) -> None:
    @group.command("retry-now")
    def retry_now_(instance: str = typer.Argument(..., metavar="INSTANCE")) -> None:
        """Send the commands waiting in the instance's retry tiers to its worker now.

        For when its back-end answers again after an outage: they need not wait out their
        delay (up to the longest tier).
        """
        from bus.broker.connection import BrokerUnavailable
        from bus.retry_now import retry_now

        with runtime() as rt:
            instances = rt.config.instances
            if instance not in instances:
                known = ", ".join(sorted(instances)) or "none"
                typer.echo(
                    f"error: no adapter instance {instance!r} (configured: {known})", err=True
                )
                raise typer.Exit(2)
            try:
                moved = retry_now(
                    rt.env.amqp_url, rt.store, instance, instances[instance], actor="cli:adapters"
                )
            except BrokerUnavailable as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
        for queue, count in moved.by_tier.items():
            typer.echo(f"{queue}: {count} moved")
        typer.echo(
            f"{moved.total} command(s) sent back to {instance}'s work queue"
            + (": `civicbus requests stuck` shows where they are" if moved.total else "")
        )


def check_instance(name: str, cfg: InstanceConfig, base_dir: Path) -> tuple[bool, str]:
    """Build one instance and run its check(); (ok, what an integrator should know)."""
    try:
        adapter = build_adapter(name, cfg, base_dir)
    except KindNotInstalled as exc:
        return False, f"kind not installed: {exc}"
    except BadSettings as exc:
        return False, f"bad settings for kind {cfg.kind}: {exc.__cause__}"
    except ConfigError as exc:
        return False, f"missing secret: {exc}"
    except MappingFileError as exc:
        return False, f"mapping problem: {exc}"
    except RegistryError as exc:
        return False, str(exc)
    except Exception as exc:  # the adapter's constructor refused its settings
        return False, f"bad settings for kind {cfg.kind}: {type(exc).__name__}: {exc}"
    try:
        health = adapter.check()
    except TransientError as exc:
        health = Health(ok=False, detail=f"unreachable: {exc}")
    except PermanentError as exc:
        health = Health(ok=False, detail=f"refused (bad credentials or settings?): {exc}")
    except Exception as exc:  # check() should report, not raise; say so
        health = Health(ok=False, detail=f"check() raised {type(exc).__name__}: {exc}")
    finally:
        adapter.close()
    detail = health.detail or ("reachable" if health.ok else "not reachable")
    return health.ok, naming_secret_variables(detail, cfg.secrets)


def naming_secret_variables(detail: str, secrets: Mapping[str, str]) -> str:
    """`detail` with each `settings.NAME` it advises checking followed by the environment
    variable the instance reads NAME from (its `secrets:` map): that is where it is changed."""
    for setting, variable in secrets.items():
        named = f"settings.{setting} (environment variable {variable})"
        detail = re.sub(rf"\bsettings\.{re.escape(setting)}\b", named.replace("\\", r"\\"), detail)
    return detail
