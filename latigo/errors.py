"""Error classes, by what the executor should do about them.

Providers raise these (and only these) so that the retry policy lives in one place: the
executor decides by class, never by inspecting a message or an HTTP library's exception.
"""


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
