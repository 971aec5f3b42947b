"""Discovery: which models to predict, asked of Gordo (latest revision, then its built
models, then the models the project expects).

The scheduler, ``latigo backfill`` and ``latigo models`` all need the same answer, so it is
asked here only: a model is predicted at its project's latest revision, and a model the
project expects but that was not built (a failed build) is named, never planned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from latigo.cache import TtlCache
from latigo.clock import Clock, system_clock
from latigo.errors import LatigoError
from latigo.providers.models import ModelInformationProvider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    project: str
    name: str
    revision: str


@dataclass(frozen=True)
class Revision:
    """A project's latest revision: its built models and, when asked, those that failed to build."""

    project: str
    revision: str
    built: tuple[str, ...]
    unbuilt: tuple[str, ...] = ()

    def models(self) -> list[Model]:
        return [Model(self.project, name, self.revision) for name in self.built]


@dataclass
class Survey:
    """Every project asked: what each one serves, and why the others could not be asked."""

    found: list[Revision] = field(default_factory=list)
    failed: dict[str, LatigoError] = field(default_factory=dict)

    def models(self) -> list[Model]:
        return [model for revision in self.found for model in revision.models()]


class Discovery:
    def __init__(
        self,
        model_info: ModelInformationProvider,
        ttl: timedelta | None = None,
        clock: Clock = system_clock,
        *,
        log_problems: bool = False,
    ) -> None:
        """With ``ttl``, a project's answer is reused for that long (the scheduler asks every
        tick). With ``log_problems``, failed builds (at every fresh answer) and failed projects
        are logged: a service has no one to print them to, a command prints them itself."""
        self._model_info = model_info
        self._log_problems = log_problems
        self._cache: TtlCache[str, Revision] | None = TtlCache(ttl, clock) if ttl is not None else None

    def built(self, project: str) -> Revision:
        """The project's latest revision and its built models; a Gordo that cannot be asked
        raises its LatigoError."""
        revision = self._model_info.latest_revision(project)
        return Revision(project, revision, tuple(self._model_info.models(project, revision)))

    def project(self, project: str) -> Revision:
        """``built``, and the expected models that were not built (failed builds)."""
        cached = self._cache.get(project) if self._cache is not None else None
        if cached is not None:
            return cached
        found = self.built(project)
        unbuilt = tuple(sorted(set(self._model_info.expected_models(project)) - set(found.built)))
        if unbuilt and self._log_problems:
            log.warning(
                "%s@%s: expected but not built (failed builds?): %s", project, found.revision, ", ".join(unbuilt)
            )
        found = Revision(project, found.revision, found.built, unbuilt)
        if self._cache is not None:
            self._cache.put(project, found)
        return found

    def survey(self, projects: Iterable[str]) -> Survey:
        """Every project's ``project``; one that fails is reported (and logged, with
        ``log_problems``: a service's discovery), the others go on."""
        survey = Survey()
        for project in projects:
            try:
                survey.found.append(self.project(project))
            except LatigoError as error:
                if self._log_problems:
                    log.error("discovery failed for project %s: %s", project, error)
                survey.failed[project] = error
        return survey
