"""The task: the message that travels on the queue, and its versioned JSON wire format.

A task says "predict model M of project P at revision R over [start, end)". Continuous
tasks cover one window; backfill tasks cover a run of consecutive windows. The format is
versioned so executors of one release can refuse, clearly, what a later scheduler wrote.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from latigo.errors import MalformedTask
from latigo.window import Grid, Window

# the wire format version this release reads and writes
TASK_VERSION = 1
# longest raw message quoted back in an error
_QUOTE_LIMIT = 200
# bytes of an oversized message kept in its dead letter (with its length and hash)
OVERSIZED_KEPT = 4096


class Task(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = TASK_VERSION
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    project: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=200)
    revision: str = Field(pattern=r"^[0-9]+$", max_length=40)
    start: AwareDatetime
    end: AwareDatetime
    created: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="before")
    @classmethod
    def _drop_attempt(cls, data: Any) -> Any:
        # earlier releases wrote an ``attempt`` counter (the ledger counts attempts now):
        # their messages still in a queue are tasks, not malformed ones
        if isinstance(data, dict) and "attempt" in data:
            return {key: value for key, value in data.items() if key != "attempt"}
        return data

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != TASK_VERSION:
            raise ValueError(f"task format version {version} is not supported (this release reads {TASK_VERSION})")
        return version

    @field_validator("project", "model")
    @classmethod
    def _printable(cls, name: str) -> str:
        # a control character (NUL above all: PostgreSQL text cannot hold it) names no model
        if any(ord(character) < 32 or ord(character) == 127 for character in name):
            raise ValueError("must not contain control characters")
        return name

    @field_validator("start", "end", "created")
    @classmethod
    def _as_utc(cls, moment: datetime) -> datetime:
        return moment.astimezone(UTC)

    @model_validator(mode="after")
    def _ordered(self) -> Task:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    @property
    def window(self) -> Window:
        return Window(self.start, self.end)

    @property
    def key(self) -> str:
        """Where the task belongs, for logs and partition keys."""
        return f"{self.project}/{self.model}"

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Task:
        """Parse a queue message; anything wrong raises MalformedTask naming the field."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or 'message'}: {item['msg']}" for item in error.errors()
            )
            quoted = raw[:_QUOTE_LIMIT] if isinstance(raw, str) else raw[:_QUOTE_LIMIT].decode("utf-8", "replace")
            raise MalformedTask(f"malformed task ({problems}): {quoted!r}") from None

    def at_revision(self, revision: str) -> Task:
        return self.model_copy(update={"revision": revision, "id": uuid.uuid4()})


@dataclass(frozen=True)
class TaskRules:
    """What a task must be before any work starts, beyond its wire format: on the project's
    window grid, no longer than the schedule coalesces, for a configured project, and a
    message of bounded size. A task that breaks one would write ledger rows or predictions
    nobody planned (an off-grid window overlaps two planned ones; a century-long span marks
    a century of windows), so it is malformed, never worked on."""

    grid: Grid
    max_span: timedelta
    projects: frozenset[str]
    max_bytes: int

    def parse(self, body: bytes) -> Task:
        """The task in ``body``; MalformedTask saying why it cannot be one."""
        if len(body) > self.max_bytes:
            digest = hashlib.sha256(body).hexdigest()
            raise MalformedTask(
                f"message of {len(body)} bytes (sha256 {digest}) is over executor.max_message_size "
                f"({self.max_bytes} bytes); its first {OVERSIZED_KEPT} bytes are kept"
            )
        task = Task.from_json(body)
        problems = []
        for name, moment in (("start", task.start), ("end", task.end)):
            if not self.grid.is_aligned(moment):
                grid = f"{self.grid.interval} from {self.grid.anchor.isoformat()}"
                problems.append(f"{name} {moment.isoformat()} is not on the window grid ({grid})")
        if task.end - task.start > self.max_span:
            problems.append(f"spans {task.end - task.start}, longer than schedule.max_task_span ({self.max_span})")
        if task.project not in self.projects:
            problems.append(f"project {task.project!r} is not in models.projects")
        if problems:
            raise MalformedTask(f"malformed task {task.id} for {task.key}: {'; '.join(problems)}")
        return task

    def kept(self, body: bytes) -> bytes:
        """What a dead letter keeps of a malformed message: all of it, or the first bytes of
        an oversized one."""
        return body if len(body) <= self.max_bytes else body[:OVERSIZED_KEPT]
