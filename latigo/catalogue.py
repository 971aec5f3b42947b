"""The model catalogue: each model's metadata, asked of Gordo once per revision for the whole
fleet and kept in the Latigo database, where every process finds it.

A model's metadata never changes within a revision (a rebuild is a new revision), yet every
window needs it. Asked per process and per cache expiry, it was one ``/metadata`` call per
continuous window at fleet scale, doubling the load on the Gordo servers. So a process looks
in its memory (the newest revision asked of each model), then in the ``model_catalogue``
table, and only then asks Gordo, under a claim: the first process to miss a model's row
inserts it claimed, fetches and stores; the others wait for the row to fill (or for the
claim to lapse, when the claimant died mid-call) instead of asking too. A failed fetch
releases the claim, so the next window asks again; nothing is stored but what Gordo
answered and Latigo could parse.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, and_, or_, select, update

from latigo import db
from latigo.cache import TtlCache
from latigo.clock import Clock, system_clock
from latigo.metrics import METADATA_LOOKUPS
from latigo.providers.models import ModelInformationProvider, ModelMetadata
from latigo.schema import model_catalogue

# the layout of a stored entry; an entry of another layout is fetched again and replaced
FORMAT = 1
# how often a process waiting for another's fetch of the same model looks again, seconds
POLL_S = 0.05

Key = tuple[str, str, str]


def encode(metadata: ModelMetadata) -> str:
    return json.dumps(
        {
            "format": FORMAT,
            "tags": list(metadata.tags),
            "target_tags": list(metadata.target_tags),
            "resolution_s": metadata.resolution.total_seconds(),
            "offset": metadata.offset,
            "min_rows": metadata.min_rows,
        }
    )


def decode(project: str, model: str, revision: str, text: str) -> ModelMetadata | None:
    """The stored entry, or None when it is of another layout (or unreadable): fetch again."""
    try:
        entry: Any = json.loads(text)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            return None
        return ModelMetadata(
            project,
            model,
            revision,
            tuple(entry["tags"]),
            tuple(entry["target_tags"]),
            timedelta(seconds=entry["resolution_s"]),
            int(entry["offset"]),
            int(entry["min_rows"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


class Catalogue(ModelInformationProvider):
    """Gordo's model information, with ``metadata`` shared through the Latigo database."""

    def __init__(
        self,
        source: ModelInformationProvider,
        engine: Engine,
        *,
        claim: timedelta,
        memory_ttl: timedelta,
        clock: Clock = system_clock,
    ) -> None:
        """``claim``: how long a fetch may take before another process asks Gordo itself
        (longer than one Gordo call, so a live claimant is never doubled). ``memory_ttl``:
        how long this process trusts its memory before reading the table again (an entry
        an operator deleted is fetched again then)."""
        self._source = source
        self._engine = engine
        self._claim = claim
        self._clock = clock
        # (project, model) -> the newest revision asked here and until when it is trusted:
        # bounded by the fleet, whatever the number of revisions
        self._memory: TtlCache[tuple[str, str], ModelMetadata] = TtlCache(memory_ttl, clock)

    def latest_revision(self, project: str) -> str:
        return self._source.latest_revision(project)

    def models(self, project: str, revision: str | None = None) -> list[str]:
        return self._source.models(project, revision)

    def expected_models(self, project: str) -> list[str]:
        return self._source.expected_models(project)

    def metadata(self, project: str, model: str, revision: str) -> ModelMetadata:
        known = self._memory.get((project, model))
        if known is not None and known.revision == revision:
            METADATA_LOOKUPS.labels("memory").inc()
            return known
        found = self._shared((project, model, revision))
        self._memory.put((project, model), found)
        return found

    def _shared(self, key: Key) -> ModelMetadata:
        """From the table, or fetched under this process's claim; waits out another's claim."""
        give_up = time.monotonic() + self._claim.total_seconds()
        while True:
            row = self._row(key)
            stored = decode(*key, row.entry) if row is not None and row.entry is not None else None
            if stored is not None:
                METADATA_LOOKUPS.labels("table").inc()
                return stored
            if self._take_claim(key, row):
                return self._fetch_and_store(key)
            if time.monotonic() >= give_up:  # a claim that outlived its length: a stopped clock
                METADATA_LOOKUPS.labels("gordo").inc()
                return self._source.metadata(*key)
            time.sleep(POLL_S)

    def _row(self, key: Key) -> Any:
        with self._engine.connect() as connection:
            return connection.execute(select(model_catalogue.c.entry).where(_is(key))).first()

    def _take_claim(self, key: Key, row: Any) -> bool:
        """Claim the fetch: insert the row claimed, or take over the row as it was read (no
        entry, or one of another layout) if its claim lapsed or was released. A row that
        changed since (stored, or claimed by another) is not taken."""
        now = self._clock()
        until = now + self._claim
        with self._engine.begin() as connection:
            if row is None:
                project, model, revision = key
                fresh = {"project": project, "model": model, "revision": revision, "claimed_until": until}
                return bool(db.insert_new(connection, model_catalogue, [fresh]))
            seen = model_catalogue.c.entry.is_(None) if row.entry is None else model_catalogue.c.entry == row.entry
            lapsed = or_(model_catalogue.c.claimed_until.is_(None), model_catalogue.c.claimed_until <= now)
            statement = update(model_catalogue).where(_is(key), seen, lapsed).values(claimed_until=until)
            return connection.execute(statement).rowcount == 1

    def _fetch_and_store(self, key: Key) -> ModelMetadata:
        METADATA_LOOKUPS.labels("gordo").inc()
        try:
            metadata = self._source.metadata(*key)
        except BaseException:
            # released, so the next window asks again (if the database is down too, the
            # claim lapses by itself)
            with contextlib.suppress(*db.UNREACHABLE), self._engine.begin() as connection:
                connection.execute(update(model_catalogue).where(_is(key)).values(claimed_until=self._clock()))
            raise
        with self._engine.begin() as connection:
            connection.execute(
                update(model_catalogue)
                .where(_is(key))
                .values(entry=encode(metadata), claimed_until=None, fetched_at=self._clock())
            )
        return metadata


def _is(key: Key):
    project, model, revision = key
    return and_(
        model_catalogue.c.project == project,
        model_catalogue.c.model == model,
        model_catalogue.c.revision == revision,
    )
