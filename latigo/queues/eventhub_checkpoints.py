"""The Event Hubs SDK's checkpoint store in the Latigo database (SQLite or PostgreSQL), so the
``eventhub`` queue needs no Azure storage account: partition ownership, claimed with
optimistic concurrency on an etag, and checkpoints, per namespace, event hub and consumer
group (tables ``eventhub_ownership`` and ``eventhub_checkpoints``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from azure.eventhub import CheckpointStore
from sqlalchemy import Engine, and_, select, update

from latigo import db
from latigo.clock import Clock, system_clock
from latigo.schema import eventhub_checkpoints, eventhub_ownership


def _timestamp(moment: datetime) -> float:
    return moment.timestamp()


class SqlCheckpointStore(CheckpointStore):
    """The SDK's CheckpointStore in the Latigo database (SQLite or PostgreSQL).

    Ownership is claimed with optimistic concurrency: a claim without an etag inserts a row
    and fails if one exists; a claim with an etag updates the row only if its etag is still
    that one, and gives it a new etag. Whoever loses a race is simply not given the
    partition, which is what the SDK's load balancing expects."""

    def __init__(self, engine: Engine, clock: Clock = system_clock) -> None:
        self._engine = engine
        self._clock = clock

    @staticmethod
    def _scope(table, namespace: str, eventhub: str, consumer_group: str):
        return and_(
            table.c.namespace == namespace,
            table.c.eventhub == eventhub,
            table.c.consumer_group == consumer_group,
        )

    def list_ownership(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        query = select(eventhub_ownership).where(
            self._scope(eventhub_ownership, fully_qualified_namespace, eventhub_name, consumer_group)
        )
        with db.translate_outage("the checkpoint store"), self._engine.connect() as connection:
            return [self._ownership(row) for row in connection.execute(query)]

    def claim_ownership(self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
        claimed = []
        with db.translate_outage("the checkpoint store"), self._engine.begin() as connection:
            for wanted in ownership_list:
                now = self._clock()
                etag = str(uuid.uuid4())
                values = {"owner_id": wanted.get("owner_id") or "", "etag": etag, "last_modified": now}
                key = {
                    "namespace": wanted["fully_qualified_namespace"],
                    "eventhub": wanted["eventhub_name"],
                    "consumer_group": wanted["consumer_group"],
                    "partition_id": wanted["partition_id"],
                }
                if wanted.get("etag") is None:
                    won = bool(db.insert_new(connection, eventhub_ownership, [{**key, **values}]))
                else:
                    won = self._update_if_unchanged(connection, key, wanted["etag"], values)
                if won:
                    claimed.append(
                        {
                            **wanted,
                            "owner_id": values["owner_id"],
                            "etag": etag,
                            "last_modified_time": _timestamp(now),
                        }
                    )
        return claimed

    @staticmethod
    def _update_if_unchanged(connection, key: dict[str, str], etag: str, values: dict[str, Any]) -> bool:
        statement = (
            update(eventhub_ownership)
            .where(*(eventhub_ownership.c[name] == value for name, value in key.items()))
            .where(eventhub_ownership.c.etag == etag)
            .values(**values)
        )
        return connection.execute(statement).rowcount == 1

    def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        row = {
            "namespace": checkpoint["fully_qualified_namespace"],
            "eventhub": checkpoint["eventhub_name"],
            "consumer_group": checkpoint["consumer_group"],
            "partition_id": checkpoint["partition_id"],
            "event_offset": None if checkpoint.get("offset") is None else str(checkpoint["offset"]),
            "sequence_number": int(checkpoint["sequence_number"]),
            "updated_at": self._clock(),
        }
        with db.translate_outage("the checkpoint store"), self._engine.begin() as connection:
            db.upsert(connection, eventhub_checkpoints, [row])

    def list_checkpoints(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        query = select(eventhub_checkpoints).where(
            self._scope(eventhub_checkpoints, fully_qualified_namespace, eventhub_name, consumer_group)
        )
        with db.translate_outage("the checkpoint store"), self._engine.connect() as connection:
            return [
                {
                    "fully_qualified_namespace": row.namespace,
                    "eventhub_name": row.eventhub,
                    "consumer_group": row.consumer_group,
                    "partition_id": row.partition_id,
                    "offset": row.event_offset,
                    "sequence_number": row.sequence_number,
                }
                for row in connection.execute(query)
            ]

    @staticmethod
    def _ownership(row) -> dict[str, Any]:
        return {
            "fully_qualified_namespace": row.namespace,
            "eventhub_name": row.eventhub,
            "consumer_group": row.consumer_group,
            "partition_id": row.partition_id,
            "owner_id": row.owner_id,
            "etag": row.etag,
            "last_modified_time": _timestamp(row.last_modified),
        }
