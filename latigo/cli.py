"""The ``latigo`` command: the service's processes and the operators' tools.

What every command starts from (configuration, parts) is ``latigo.cli_context``; the
``backfill`` command, the longest, is ``latigo.cli_backfill``."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import click

from latigo.cli_backfill import backfill
from latigo.cli_context import DURATION, components, config_of, service_components
from latigo.config import CONFIG_PATH_VARIABLE, dump_config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "path",
    type=click.Path(dir_okay=False),
    help=f"YAML configuration file [default: ${CONFIG_PATH_VARIABLE} or local_config.yaml]",
)
@click.pass_context
def main(ctx: click.Context, path: str | None) -> None:
    """Latigo keeps Gordo's models predicting: every model, every window, once."""
    ctx.ensure_object(dict)
    ctx.obj["path"] = path
    if path:  # child processes of `latigo run` read the same file
        os.environ[CONFIG_PATH_VARIABLE] = path


@main.command()
@click.option("--executors", type=click.IntRange(min=1), help="executor processes [default: run.executors]")
@click.pass_context
def run(ctx: click.Context, executors: int | None) -> None:
    """The whole service on this machine: a scheduler and executors."""
    from latigo.service import run_service

    config = config_of(ctx)
    # migrate once, before the children start (they serve the metrics ports, not this process)
    parts = service_components(ctx, serve_metrics=False)
    if parts is None:
        return
    parts.close()
    sys.exit(run_service(executors or config.run.executors, config.metrics.port))


@main.command()
@click.option("--once", is_flag=True, help="plan and publish once, then exit")
@click.pass_context
def scheduler(ctx: click.Context, once: bool) -> None:
    """Plan due windows and publish them as tasks, every tick."""
    from latigo.service import run_scheduler

    parts = components(ctx) if once else service_components(ctx)
    if parts is None:
        return
    with parts:
        code = run_scheduler(parts, once=once)
    sys.exit(code)


@main.command()
@click.option("--max-tasks", type=click.IntRange(min=1), help="exit after this many tasks")
@click.option("--until-idle", is_flag=True, help="exit when the queue is empty")
@click.pass_context
def executor(ctx: click.Context, max_tasks: int | None, until_idle: bool) -> None:
    """Consume tasks: fetch sensor data, predict with Gordo, store, acknowledge."""
    from latigo.service import run_executor

    parts = service_components(ctx)
    if parts is None:
        return
    with parts:
        handled = run_executor(parts, max_tasks=max_tasks, until_idle=until_idle)
    click.echo(f"handled {handled} tasks", err=True)


@main.group()
def db() -> None:
    """The Latigo database."""


@db.command()
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Apply every pending migration (also done at every start)."""
    from latigo import db as database

    engine = database.create_engine(config_of(ctx).database.url)
    database.upgrade(engine)
    click.echo(f"database at the newest revision: {engine.url.render_as_string(hide_password=True)}")


@main.command()
@click.pass_context
def models(ctx: click.Context) -> None:
    """Every configured project's latest revision, its models, and models that failed to build."""
    from latigo.discovery import Discovery
    from latigo.errors import LatigoError
    from latigo.providers.models.gordo import GordoModels

    config = config_of(ctx)
    discovery = Discovery(GordoModels(config.models))
    failed = False
    for project in config.models.projects:
        try:
            found = discovery.project(project)
        except LatigoError as error:
            click.echo(f"{project}: {error}", err=True)
            failed = True
            continue
        click.echo(f"{found.project} @ {found.revision}: {len(found.built)} models")
        for name in found.built:
            click.echo(f"  {name}")
        for name in found.unbuilt:
            click.echo(f"  {name}  (expected, not built)")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--model", "only", multiple=True, help="only this model (repeatable): each of its tags, found or missing")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def sensors(ctx: click.Context, only: tuple[str, ...], as_json: bool) -> None:
    """The sensor store's sensors and, per model, the tags missing from it (a model with a
    missing tag gets no data for it: its windows may end as no_data)."""
    import json

    from latigo.discovery import Discovery
    from latigo.errors import LatigoError
    from latigo.printable import printable
    from latigo.providers.sensors import SensorInformationProvider
    from latigo.sensorcheck import check_models

    with components(ctx) as parts:
        if not isinstance(parts.sensors, SensorInformationProvider):
            raise click.UsageError(f"the {parts.config.sensors.type} sensor store cannot list its sensors")
        try:
            known = parts.sensors.sensors()
        except LatigoError as error:
            click.echo(f"latigo: the sensor store cannot be asked: {printable(str(error))}", err=True)
            ctx.exit(1)
        survey = Discovery(parts.model_info).survey(parts.config.models.projects)
        models = survey.models()
        unknown = sorted(set(only) - {model.name for model in models})
        if unknown:
            click.echo(f"latigo: no such model: {printable(', '.join(unknown))}", err=True)
            ctx.exit(2)
        checks = check_models([m for m in models if not only or m.name in only], parts.model_info, known)
    if as_json:
        document = {
            "sensors": known,
            "models": [entry.to_dict() for entry in checks],
            "failed_projects": {project: str(failure) for project, failure in survey.failed.items()},
        }
        click.echo(json.dumps(document, indent=2))
    else:
        if not only:
            click.echo(f"sensor store: {len(known)} sensors")
            for tag in known:
                click.echo(f"  {printable(tag)}")
        for project, failure in survey.failed.items():
            click.echo(f"{printable(project)}: {printable(str(failure))}", err=True)
        for entry in checks:
            name = printable(f"{entry.project}/{entry.model} @ {entry.revision}")
            if entry.error is not None:
                click.echo(f"{name}: metadata unavailable: {printable(entry.error)}")
            elif only:
                click.echo(f"{name}: {len(entry.tags)} tags, {len(entry.missing)} missing")
                for tag in entry.tags:
                    click.echo(f"  {printable(tag)}{'  MISSING' if tag in entry.missing else ''}")
            elif entry.missing:
                missing = printable(", ".join(entry.missing))
                click.echo(f"{name}: missing {len(entry.missing)} of {len(entry.tags)} tags: {missing}")
        if not only:
            short = sum(1 for entry in checks if entry.missing)
            click.echo(f"{len(checks)} models, {short} with missing tags")
    sys.exit(1 if survey.failed or any(entry.error for entry in checks) else 0)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--failures", type=click.IntRange(min=0), default=10, show_default=True, help="recent failures shown")
@click.pass_context
def status(ctx: click.Context, as_json: bool, failures: int) -> None:
    """Windows per state, freshness, recent failures and dead letters, per model."""
    import json

    import pandas as pd

    from latigo import status as report

    with components(ctx) as parts:
        now = parts.clock()
        statuses = report.model_statuses(parts.engine, parts.config.schedule.interval)
        recent = report.recent_failures(parts.engine, failures)
        outages = report.current_outages(parts.engine, now)
        document = report.status_document(
            statuses, recent, report.dead_letter_count(parts.engine), parts.queue.depth(), now, outages
        )
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    for outage in outages:
        click.echo(
            f"PAUSED: {outage.dependency} is down since {outage.since:%Y-%m-%d %H:%M:%S} UTC "
            f"({outage.executors} executor{'s' if outage.executors != 1 else ''} waiting; work resumes by itself): "
            f"{outage.error[:200]}\n"
        )
    if not statuses:
        click.echo("no windows planned yet")
    else:
        with pd.option_context("display.width", 200, "display.max_rows", 10_000):
            click.echo(report.status_table(statuses, now).to_string(index=False))
    if recent:
        click.echo("\nrecent failures:")
        for failure in recent:
            click.echo(
                f"  {failure.updated_at:%Y-%m-%d %H:%M} {failure.project}/{failure.model} "
                f"{failure.window_start:%Y-%m-%d %H:%M} {failure.state} ({failure.attempts} attempts): "
                f"{failure.error[:200]}"
            )
    click.echo(f"\ndead letters: {document['dead_letters']}; queue depth: {document['queue_depth']}")


@main.command()
@click.option("--output", default="total-anomaly-scaled", show_default=True, help="output column group")
@click.option("--since", type=DURATION, default="6h", show_default=True, help="how far back")
@click.option("--model", help="only this model")
@click.pass_context
def predictions(ctx: click.Context, output: str, since: timedelta, model: str | None) -> None:
    """Recent predictions from the SQL prediction store, time by model."""
    import pandas as pd

    from latigo import status as report
    from latigo.config import SqlPredictionsConfig

    with components(ctx) as parts:
        if not isinstance(parts.config.predictions, SqlPredictionsConfig):
            raise click.UsageError("predictions are stored in InfluxDB: look at them there (or in Grafana)")
        projects = parts.config.models.projects  # a model's predictions are found by its key
        frame = report.recent_predictions(parts.engine, output, parts.clock() - since, model, projects)
    if frame.empty:
        click.echo(f"no {output} predictions in the last {since}")
        return
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_columns", 20):
        click.echo(frame.round(4).to_string())


@main.group()
def dlq() -> None:
    """Dead letters: tasks given up on, with why."""


@dlq.command("list")
@click.option("--model", "models", multiple=True, help="only this model (repeatable)")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def dlq_list(ctx: click.Context, models: tuple[str, ...], limit: int, as_json: bool) -> None:
    """The dead letters, oldest first."""
    import json

    from latigo import dlq as dead

    with components(ctx) as parts:
        found = dead.letters(parts.engine, models=models, limit=limit)
    if as_json:
        click.echo(json.dumps([letter.to_dict() for letter in found], indent=2))
        return
    if not found:
        click.echo("no dead letters")
    for letter in found:
        click.echo(letter.describe())


@dlq.command("replay")
@click.option("--id", "ids", type=int, multiple=True, help="this dead letter (repeatable)")
@click.option("--model", "models", multiple=True, help="every dead letter of this model (repeatable)")
@click.option("--all", "everything", is_flag=True, help="every dead letter")
@click.option("--drop-malformed", is_flag=True, help="delete chosen malformed messages (they cannot run)")
@click.pass_context
def dlq_replay(
    ctx: click.Context, ids: tuple[int, ...], models: tuple[str, ...], everything: bool, drop_malformed: bool
) -> None:
    """Publish the chosen dead letters again as fresh tasks."""
    from latigo import dlq as dead

    if not (ids or models or everything):
        raise click.UsageError("choose dead letters: --id, --model or --all")
    with components(ctx) as parts:
        report = dead.replay(parts.engine, parts.queue, parts.ledger, ids, models, everything, drop_malformed)
    click.echo(f"replayed {len(report.replayed)} dead letters" + (f": {report.replayed}" if report.replayed else ""))
    if report.malformed:
        click.echo(f"kept {len(report.malformed)} malformed messages (use --drop-malformed): {report.malformed}")
    if report.dropped:
        click.echo(f"dropped {len(report.dropped)} malformed messages: {report.dropped}")


@main.group()
def config() -> None:
    """The configuration: exit 2, with a message naming each offending key and what it
    takes, when it is invalid (as every other command does)."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the effective configuration (file, environment, defaults), secrets masked:
    secret keys, and the password of every URL (database.url's included)."""
    click.echo(dump_config(config_of(ctx)), nl=False)


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the configuration as every process does at start, without connecting to
    anything; exit 0 if it is valid, 2 with the offending keys if it is not."""
    config_of(ctx)
    click.echo("configuration is valid")


@main.command()
@click.option("--history", type=DURATION, help="sensor history to feed first [default: initial backfill + 2h]")
@click.pass_context
def demo(ctx: click.Context, history: timedelta | None) -> None:
    """Everything on this machine: a local Gordo with demo models, a live synthetic sensor
    feed with injected anomalies, and the service predicting on it."""
    from latigo.demo.run import run_demo

    sys.exit(run_demo(config_of(ctx), history))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=8000,
    show_default=True,
    help="port to listen on (0: any free one)",
)
@click.pass_context
def web(ctx: click.Context, host: str, port: int) -> None:
    """Serve the status page: a heatmap of models by recent windows, a chart per model,
    and /api/status.json; until SIGTERM or Ctrl-C."""
    from latigo import web as status_page
    from latigo.service import stop_on_signals

    parts = service_components(ctx, serve_metrics=False)
    if parts is None:
        return
    with parts:
        app = status_page.StatusApp(parts.engine, parts.config, parts.clock)
        try:
            server = status_page.serve(app, host, port)
        except OSError as error:
            click.echo(f"latigo: cannot listen on {host}:{port}: {error.strerror}", err=True)
            ctx.exit(1)
        click.echo(f"status page on http://{host}:{server.server_port}/ (Ctrl-C stops)", err=True)
        with stop_on_signals() as stop:
            stop.wait()
        server.shutdown()
        server.server_close()


main.add_command(backfill)

if __name__ == "__main__":
    main()
