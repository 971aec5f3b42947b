"""What every ``latigo`` command starts from: the configuration, loaded and checked once,
and the process's parts built from it.

Its own module so that the commands can live in more than one module (``latigo.cli`` and
``latigo.cli_backfill``) without importing each other.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from latigo.config import Config, ConfigError, load_config, parse_duration

if TYPE_CHECKING:
    from latigo.components import Components


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        parsed = parse_duration(value)
        if not isinstance(parsed, timedelta):
            self.fail(f"{value!r} is not a duration such as 30m, 6h or 7d", param, ctx)
        return parsed


# a click parameter type for durations written as the configuration writes them (30m, 6h, 7d)
DURATION = _Duration()


def config_of(ctx: click.Context) -> Config:
    """Load (once) and validate the configuration; a bad one ends the command with exit 2."""
    if "config" not in ctx.obj:
        try:
            ctx.obj["config"] = load_config(ctx.obj["path"])
        except ConfigError as error:
            click.echo(f"latigo: {error}", err=True)
            ctx.exit(2)
        from latigo import logs

        logs.configure(ctx.obj["config"].logging)
    return ctx.obj["config"]


def components(ctx: click.Context) -> Components:
    """An operator command's parts; a database that does not answer ends it with one line
    and exit 1 (the service's processes wait for it instead: see service_components)."""
    from latigo import db
    from latigo.components import build

    config = config_of(ctx)
    try:
        return build(config)
    except db.UNREACHABLE as error:
        click.echo(f"latigo: the Latigo database is unavailable: {db.first_line(error) or error}", err=True)
        raise click.exceptions.Exit(1) from None


def service_components(ctx: click.Context, *, serve_metrics: bool = True) -> Components | None:
    """A long-running process's parts, once the database answers: it waits through an outage
    (a line per try, /readyz false meanwhile). None when stopped while waiting."""
    from latigo import metrics
    from latigo.service import components_when_ready, stop_on_signals

    config = config_of(ctx)
    if serve_metrics:
        metrics.serve(config.metrics.host, config.metrics.port)
    with stop_on_signals() as stop:
        return components_when_ready(config, stop)
