"""The ``latigo`` command: the service's processes and the operators' tools."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import click

from latigo.config import CONFIG_PATH_VARIABLE, Config, ConfigError, dump_config, load_config, parse_duration


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        parsed = parse_duration(value)
        if not isinstance(parsed, timedelta):
            self.fail(f"{value!r} is not a duration such as 30m, 6h or 7d", param, ctx)
        return parsed


DURATION = _Duration()


def _config(ctx: click.Context) -> Config:
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


def _components(ctx: click.Context):
    """An operator command's parts; a database that does not answer ends it with one line
    and exit 1 (the service's processes wait for it instead: see _service_components)."""
    import sqlalchemy.exc

    from latigo.components import build

    config = _config(ctx)
    try:
        return build(config)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()
        click.echo(f"latigo: the Latigo database is unavailable: {reason[0][:300] if reason else error}", err=True)
        ctx.exit(1)


def _service_components(ctx: click.Context, *, serve_metrics: bool = True):
    """A long-running process's parts, once the database answers: it waits through an outage
    (a line per try, /readyz false meanwhile). None when stopped while waiting."""
    from latigo import metrics
    from latigo.service import components_when_ready, stop_on_signals

    config = _config(ctx)
    if serve_metrics:
        metrics.serve(config.metrics.host, config.metrics.port)
    with stop_on_signals() as stop:
        return components_when_ready(config, stop)


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

    config = _config(ctx)
    # migrate once, before the children start (they serve the metrics ports, not this process)
    parts = _service_components(ctx, serve_metrics=False)
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

    parts = _components(ctx) if once else _service_components(ctx)
    if parts is None:
        return
    try:
        code = run_scheduler(parts, once=once)
    finally:
        parts.close()
    sys.exit(code)


@main.command()
@click.option("--max-tasks", type=click.IntRange(min=1), help="exit after this many tasks")
@click.option("--until-idle", is_flag=True, help="exit when the queue is empty")
@click.pass_context
def executor(ctx: click.Context, max_tasks: int | None, until_idle: bool) -> None:
    """Consume tasks: fetch sensor data, predict with Gordo, store, acknowledge."""
    from latigo.service import run_executor

    parts = _service_components(ctx)
    if parts is None:
        return
    try:
        handled = run_executor(parts, max_tasks=max_tasks, until_idle=until_idle)
    finally:
        parts.close()
    click.echo(f"handled {handled} tasks", err=True)


@main.group()
def db() -> None:
    """The Latigo database."""


@db.command()
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Apply every pending migration (also done at every start)."""
    from latigo import db as database

    engine = database.create_engine(_config(ctx).database.url)
    database.upgrade(engine)
    click.echo(f"database at the newest revision: {engine.url.render_as_string(hide_password=True)}")


@main.command()
@click.pass_context
def models(ctx: click.Context) -> None:
    """Every configured project's latest revision, its models, and models that failed to build."""
    from latigo.errors import LatigoError
    from latigo.providers.models.gordo import GordoModels

    config = _config(ctx)
    gordo = GordoModels(config.models)
    failed = False
    for project in config.models.projects:
        try:
            revision = gordo.latest_revision(project)
            built = gordo.models(project, revision)
            missing = sorted(set(gordo.expected_models(project)) - set(built))
        except LatigoError as error:
            click.echo(f"{project}: {error}", err=True)
            failed = True
            continue
        click.echo(f"{project} @ {revision}: {len(built)} models")
        for name in built:
            click.echo(f"  {name}")
        for name in missing:
            click.echo(f"  {name}  (expected, not built)")
    sys.exit(1 if failed else 0)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--failures", type=click.IntRange(min=0), default=10, show_default=True, help="recent failures shown")
@click.pass_context
def status(ctx: click.Context, as_json: bool, failures: int) -> None:
    """Windows per state, freshness, recent failures and dead letters, per model."""
    import json

    import pandas as pd

    from latigo import status as report

    parts = _components(ctx)
    try:
        now = parts.clock()
        statuses = report.model_statuses(parts.engine, parts.config.schedule.interval)
        recent = report.recent_failures(parts.engine, failures)
        outages = report.current_outages(parts.engine, now)
        document = report.status_document(
            statuses, recent, report.dead_letter_count(parts.engine), parts.queue.depth(), now, outages
        )
    finally:
        parts.close()
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

    parts = _components(ctx)
    if parts.config.predictions.type != "sql":
        raise click.UsageError("predictions are stored in InfluxDB: look at them there (or in Grafana)")
    frame = report.recent_predictions(parts.engine, output, parts.clock() - since, model)
    parts.close()
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

    parts = _components(ctx)
    try:
        found = dead.letters(parts.engine, models=models, limit=limit)
    finally:
        parts.close()
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
    parts = _components(ctx)
    try:
        report = dead.replay(parts.engine, parts.queue, parts.ledger, ids, models, everything, drop_malformed)
    finally:
        parts.close()
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
    click.echo(dump_config(_config(ctx)), nl=False)


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the configuration as every process does at start, without connecting to
    anything; exit 0 if it is valid, 2 with the offending keys if it is not."""
    _config(ctx)
    click.echo("configuration is valid")


@main.command()
@click.option("--history", type=DURATION, help="sensor history to feed first [default: initial backfill + 2h]")
@click.pass_context
def demo(ctx: click.Context, history: timedelta | None) -> None:
    """Everything on this machine: a local Gordo with demo models, a live synthetic sensor
    feed with injected anomalies, and the service predicting on it."""
    from latigo.demo.run import run_demo

    sys.exit(run_demo(_config(ctx), history))


@main.command()
@click.option(
    "--from",
    "start_text",
    required=True,
    metavar="TIME",
    help="start: a date or RFC 3339 time (UTC); aligned up to the window grid",
)
@click.option(
    "--to",
    "end_text",
    required=True,
    metavar="TIME",
    help="end, excluded: aligned down, and to the newest due window",
)
@click.option("--project", help="only this project [default: models.projects]")
@click.option("--model", "names", multiple=True, help="only this model (repeatable)")
@click.option(
    "--mode",
    type=click.Choice(["missing", "failed", "all"]),
    default="missing",
    show_default=True,
    help="missing: windows with no ledger row; failed: failed and dead windows again; "
    "all: every window again (queued ones excepted)",
)
@click.option("--dry-run", is_flag=True, help="count what would be planned; write nothing")
@click.option("--wait", is_flag=True, help="then follow the windows until none is planned, queued or failed")
@click.option("--timeout", type=DURATION, help="with --wait: stop waiting after this long (exit 1)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.pass_context
def backfill(
    ctx: click.Context,
    start_text: str,
    end_text: str,
    project: str | None,
    names: tuple[str, ...],
    mode: str,
    dry_run: bool,
    wait: bool,
    timeout: timedelta | None,
    as_json: bool,
) -> None:
    """Plan historic windows in the ledger. The scheduler publishes them, coalesced into
    tasks of up to schedule.max_task_span, after the continuous windows."""
    import json

    from latigo.backfill import Backfill, UnknownModels, format_summary, parse_moment
    from latigo.errors import LatigoError

    moments = {}
    for option, text in (("--from", start_text), ("--to", end_text)):
        try:
            moments[option] = parse_moment(text)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint=f"'{option}'") from None
    if moments["--to"] <= moments["--from"]:
        raise click.UsageError(f"--from ({start_text}) must be before --to ({end_text})")
    if wait and dry_run:
        raise click.UsageError("--wait has nothing to wait for after --dry-run")
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    parts = _components(ctx)
    try:
        planner = Backfill.from_components(parts)
        try:
            models = planner.models([project] if project else parts.config.models.projects, names)
        except UnknownModels as error:
            click.echo(f"latigo: {error}", err=True)
            ctx.exit(2)
        except LatigoError as error:
            click.echo(f"latigo: cannot list the models: {error}", err=True)
            ctx.exit(1)
        start, end = planner.range(moments["--from"], moments["--to"])
        if planner.grid.floor(moments["--to"]) > end:  # cut at the newest due window
            click.echo(
                f"latigo: windows ending after {end.isoformat()} are not due yet: the scheduler plans them",
                err=True,
            )
        label = "counting" if dry_run else "planning"
        with click.progressbar(length=planner.count(models, start, end), label=label, file=sys.stderr) as bar:
            summary = planner.plan(models, start, end, mode, dry_run=dry_run, progress=bar.update)
        result, finished = summary.to_dict(), True
        if not as_json:
            click.echo(format_summary(summary))
        if wait:
            outstanding = planner.outstanding(summary)
            with click.progressbar(length=outstanding, label="predicting", file=sys.stderr) as bar:
                report = planner.wait(summary, timeout=timeout, progress=bar.update)
            result["wait"], finished = report.to_dict(), report.finished
            if not as_json:
                states = ", ".join(f"{count} {state}" for state, count in sorted(report.states.items()))
                done = (
                    "finished"
                    if report.finished
                    else f"timed out after {timeout}: {report.outstanding} windows still to do"
                )
                click.echo(f"wait {done} ({states or 'no windows'})")
        if as_json:
            click.echo(json.dumps(result, indent=2))
    finally:
        parts.close()
    if not finished:
        sys.exit(1)


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

    parts = _service_components(ctx, serve_metrics=False)
    if parts is None:
        return
    try:
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
    finally:
        parts.close()


if __name__ == "__main__":
    main()
