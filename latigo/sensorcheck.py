"""Which of a model's tags the sensor store does not know.

A model whose tags have no data in the sensor store is still predicted (the data may come),
but each of its windows ends as ``no_data`` with nothing to say why. Checking the model's
tags (its input tags and its target tags: both are read from the store) against the store's
list of sensors names the cause. ``latigo sensors`` asks it; the check itself is pure.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from latigo.discovery import Model
from latigo.errors import LatigoError
from latigo.providers.models import ModelInformationProvider, ModelMetadata


@dataclass(frozen=True)
class TagCheck:
    """One model's tags against the store; ``error`` when its metadata could not be read."""

    project: str
    model: str
    revision: str
    tags: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "project": self.project,
            "model": self.model,
            "revision": self.revision,
            "tags": list(self.tags),
            "missing": list(self.missing),
            "error": self.error,
        }


def model_tags(metadata: ModelMetadata) -> tuple[str, ...]:
    """Every tag a window of the model reads from the store, once each, inputs first."""
    return tuple(dict.fromkeys((*metadata.tags, *metadata.target_tags)))


def missing_tags(tags: Iterable[str], known: Collection[str]) -> tuple[str, ...]:
    """The tags the store does not know, in the model's order."""
    return tuple(tag for tag in dict.fromkeys(tags) if tag not in known)


def check(metadata: ModelMetadata, known: Collection[str]) -> TagCheck:
    tags = model_tags(metadata)
    return TagCheck(metadata.project, metadata.model, metadata.revision, tags, missing_tags(tags, known))


def check_models(
    models: Iterable[Model], model_info: ModelInformationProvider, known: Collection[str]
) -> list[TagCheck]:
    """Each model's check; a model whose metadata cannot be read is reported, the others go on."""
    known = frozenset(known)
    checks = []
    for model in models:
        try:
            metadata = model_info.metadata(model.project, model.name, model.revision)
        except LatigoError as error:
            checks.append(TagCheck(model.project, model.name, model.revision, error=str(error)))
            continue
        checks.append(check(metadata, known))
    return checks
