"""Logging set-up shared by every process: one line per event, optionally JSON."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from latigo.config import LoggingConfig

# the text layout of a log line
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(process)d %(name)s: %(message)s"


# the task the current thread works on, for every log line it writes
_TASK: ContextVar[dict[str, str] | None] = ContextVar("latigo_task", default=None)


@contextmanager
def task_context(**fields: str) -> Iterator[None]:
    """Attach the task's identity (id, project, model, window) to log lines written inside."""
    token = _TASK.set(fields)
    try:
        yield
    finally:
        _TASK.reset(token)


class JsonLines(logging.Formatter):
    """One JSON object per line, for log collectors, with the task's fields when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "thread": record.threadName,
            "message": record.getMessage(),
            **(_TASK.get() or {}),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


def configure(settings: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if settings.json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # per-request chatter from libraries drowns the events that matter
    for noisy in ("urllib3", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
