"""Error classes, by what the executor should do about them, and the tables that map each
backend's failures onto them.

Providers raise these (and only these) so that the retry policy lives in one place: the
executor decides by class, never by inspecting a message or an HTTP library's exception.

Each backend states how its failures translate in one table, the way httpx maps httpcore's
transport exceptions onto its own: rows of :class:`Caught` for the exceptions its library
raises, applied by :func:`translated`, and rows of :class:`Answered` for the statuses its
server answers with, applied by :func:`answer_error`. The first row that matches decides,
as the first matching ``except`` clause would, so a narrower class goes above a wider one.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple


class LatigoError(Exception):
    """Base of every error Latigo raises on purpose."""


class TransientError(LatigoError):
    """Worth retrying: timeouts, connection errors, 5xx, storage unavailable."""


class Unavailable(TransientError):
    """A dependency may be down for everyone: it refused the connection, timed out, or
    answered that it is unavailable. The executor asks the dependency itself (a probe)
    whether that is so before it counts the failure against the task."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency


class PermanentError(LatigoError):
    """Retrying cannot help: other 4xx, unknown model, an answer that is not a prediction."""


class MalformedTask(PermanentError):
    """A queue message that is not a valid task; the reason says which field is wrong."""


class RevisionGone(PermanentError):
    """Gordo no longer serves the task's revision (HTTP 410): re-plan at the latest one."""


class Caught(NamedTuple):
    """A row of a backend's table: an exception its library raises, the Latigo error class it
    becomes, and the message, a format string of ``error``, ``name`` (the exception's class
    name), ``dependency`` and what the caller passes."""

    exceptions: type[Exception] | tuple[type[Exception], ...]
    becomes: type[LatigoError]
    message: str


class Answered(NamedTuple):
    """A row of a backend's table: HTTP statuses, the Latigo error class an answer with one of
    them becomes, and the message (a format string of ``status``, ``detail``, ``dependency``
    and what the caller passes). With ``detail`` set, the row matches only an answer whose
    error text starts so: where the status alone does not say which error it is."""

    statuses: Container[int]
    becomes: type[LatigoError]
    message: str
    detail: str = ""


def _error(becomes: type[LatigoError], message: str, dependency: str) -> LatigoError:
    if issubclass(becomes, Unavailable):
        if not dependency:
            raise TypeError(f"{becomes.__name__} needs the dependency that may be down")
        return becomes(dependency, message)
    return becomes(message)


def caught(table: Sequence[Caught], error: BaseException) -> Caught | None:
    """The row of ``table`` that ``error`` matches, if any."""
    return next((row for row in table if isinstance(error, row.exceptions)), None)


@contextmanager
def translated(table: Sequence[Caught], dependency: str = "", **context: Any) -> Iterator[None]:
    """Exceptions raised inside leave as their row of ``table`` says (``dependency`` names what
    may be down, for :class:`Unavailable`); those no row matches leave as they are. The
    original is not chained: the message quotes what of it matters, for a one-line log."""
    try:
        yield
    except Exception as error:
        row = caught(table, error)
        if row is None:
            raise
        message = row.message.format(error=error, name=type(error).__name__, dependency=dependency, **context)
        raise _error(row.becomes, message, dependency) from None


def answer_error(
    table: Sequence[Answered],
    status: int,
    dependency: str = "",
    detail: str | Callable[[], str] = "",
    **context: Any,
) -> LatigoError | None:
    """The error an answer with ``status`` is by its row of ``table``, or None (an answer to
    read). ``detail`` is the answer's error text, or a call that reads it: called only for an
    answer some row's statuses hold, so a good answer's body is left unread."""
    text: str | None = None
    for row in table:
        if status not in row.statuses:
            continue
        if text is None:
            text = detail() if callable(detail) else detail
        if text.startswith(row.detail):
            message = row.message.format(status=status, detail=text, dependency=dependency, **context)
            return _error(row.becomes, message, dependency)
    return None
