"""``latigo backfill``: plan a range of history from the command line, then optionally
follow it until it is predicted, with the summary table it prints (the planning itself is
``latigo.backfill``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from latigo.cli_context import DURATION, components

if TYPE_CHECKING:
    from latigo.backfill import BackfillSummary


@click.command()
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

    from latigo.backfill import Backfill, UnknownModels, parse_moment
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
    with components(ctx) as parts:
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
    if not finished:
        sys.exit(1)


def format_summary(summary: BackfillSummary) -> str:
    """The summary as a table: one row per model, then the totals."""
    from latigo.backfill import COUNTS

    header = ("project", "model", "revision", *COUNTS)
    rows = [
        (model.project, model.model, model.revision, *(str(getattr(model, name)) for name in COUNTS))
        for model in summary.models
    ]
    rows.append(("total", "", "", *(str(count) for count in summary.total().values())))
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(row: Sequence[str]) -> str:
        # names to the left, counts to the right
        cells = [
            cell.ljust(width) if column < 3 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    total = summary.total()
    title = f"backfill --mode {summary.mode.value} [{summary.start.isoformat()}, {summary.end.isoformat()})"
    if summary.dry_run:
        footer = (
            f"dry run, nothing written: would plan {total['planned']} and reset {total['reset']} windows, "
            f"{total['tasks']} tasks"
        )
    elif total["planned"] + total["reset"] == 0:
        footer = "nothing to plan: this mode leaves every window of the range as it is"
    else:
        footer = (
            f"planned {total['planned']} and reset {total['reset']} windows: the scheduler publishes them "
            f"as {total['tasks']} tasks, after the continuous windows"
        )
    return "\n".join([title, line(header), *(line(row) for row in rows), footer])
