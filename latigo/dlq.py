"""Dead letters: tasks Latigo gave up on, kept with why, until an operator replays them.

A dead letter is never deleted by Latigo itself. ``replay`` publishes a fresh task (attempt
1, new id) for each chosen letter, puts its windows back to ``queued`` with their attempts
reset, and only then removes the letter: a crash half way means a letter replayed twice,
which idempotent storage absorbs, never a letter lost. Malformed messages cannot be
replayed (there is no task to run); they stay listed until removed with ``--drop``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, delete, select

from latigo.errors import MalformedTask
from latigo.ledger import Ledger
from latigo.queues import TaskQueue
from latigo.schema import dead_letters
from latigo.task import Task

# the reason of a dead letter whose message was not a task that can run
MALFORMED = "malformed"
# characters of a dead letter's error shown in a listing line
ERROR_SHOWN = 300


@dataclass(frozen=True)
class DeadLetter:
    id: int
    task_id: str | None
    project: str | None
    model: str | None
    reason: str
    error: str
    attempts: int
    created_at: datetime
    body: bytes

    @property
    def task(self) -> Task | None:
        """The task that died, or None for a malformed message."""
        try:
            return Task.from_json(self.body)
        except MalformedTask:
            return None

    def describe(self) -> str:
        task = self.task
        what = f"{task.key} {task.window}" if task else "(malformed message)"
        return (
            f"#{self.id} {self.created_at:%Y-%m-%d %H:%M:%S} {what} "
            f"{self.reason} after {self.attempts} attempt(s): {self.error[:ERROR_SHOWN]}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            **self.__dict__,
            "created_at": self.created_at.isoformat(),
            "body": self.body.decode("utf-8", "replace"),
        }


@dataclass
class ReplayReport:
    replayed: list[int] = field(default_factory=list)
    malformed: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


def _selection(ids: Sequence[int] = (), models: Sequence[str] = (), everything: bool = False):
    query = select(dead_letters).order_by(dead_letters.c.id)
    if everything:
        return query
    if not ids and not models:
        raise ValueError("choose dead letters: --id, --model or --all")
    conditions = []
    if ids:
        conditions.append(dead_letters.c.id.in_(list(ids)))
    if models:
        conditions.append(dead_letters.c.model.in_(list(models)))
    return query.where(*conditions)


def letters(
    engine: Engine, ids: Sequence[int] = (), models: Sequence[str] = (), limit: int | None = None
) -> list[DeadLetter]:
    """Dead letters, oldest first; all of them unless ids or models are given."""
    query = _selection(ids, models, everything=not ids and not models).limit(limit)
    with engine.connect() as connection:
        return [DeadLetter(**{**row._mapping, "body": bytes(row.body)}) for row in connection.execute(query)]


def replay(
    engine: Engine,
    queue: TaskQueue,
    ledger: Ledger,
    ids: Sequence[int] = (),
    models: Sequence[str] = (),
    everything: bool = False,
    drop_malformed: bool = False,
) -> ReplayReport:
    report = ReplayReport()
    with engine.connect() as connection:
        chosen = [
            (row.id, row.reason, bytes(row.body)) for row in connection.execute(_selection(ids, models, everything))
        ]
    tasks: list[tuple[int, Task]] = []
    for letter_id, reason, body in chosen:
        try:
            # a malformed letter is never a task, even when its body parses: off the grid, too
            # long or for another project, it would rewrite windows nobody planned
            if reason == MALFORMED:
                raise MalformedTask(reason)
            task = Task.from_json(body)
        except MalformedTask:
            (report.dropped if drop_malformed else report.malformed).append(letter_id)
            continue
        tasks.append((letter_id, task.model_copy(update={"id": uuid.uuid4()})))
    if tasks:
        queue.publish([task.to_json() for _, task in tasks], [task.key for _, task in tasks])
        ledger.requeue([task for _, task in tasks])
        report.replayed = [letter_id for letter_id, _ in tasks]
    gone = report.replayed + report.dropped
    if gone:
        with engine.begin() as connection:
            connection.execute(delete(dead_letters).where(dead_letters.c.id.in_(gone)))
    return report
