"""The task wire format: versioned JSON, strict, with errors that say what is wrong."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from latigo.errors import MalformedTask
from latigo.task import TASK_VERSION, Task

START = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)


def make(**changes):
    fields = dict(project="demo", model="pump-1", revision="1769904000", start=START, end=START + timedelta(minutes=30))
    fields.update(changes)
    return Task(**fields)


def test_roundtrip_and_rfc3339_times():
    task = make()
    document = json.loads(task.to_json())
    assert document["version"] == TASK_VERSION
    assert document["start"] == "2026-03-01T10:00:00Z" and document["end"] == "2026-03-01T10:30:00Z"
    assert set(document) == {"version", "id", "project", "model", "revision", "start", "end", "created"}
    assert Task.from_json(task.to_json()) == task


def test_times_in_other_zones_become_utc():
    raw = make().to_json().replace(b'"2026-03-01T10:00:00Z"', b'"2026-03-01T12:00:00+02:00"')
    assert Task.from_json(raw).start == START


@pytest.mark.parametrize(
    "raw, names",
    [
        (b"", "Invalid JSON"),
        (b"not json", "Invalid JSON"),
        (b"[1, 2]", "object"),
        (b"\xff\xfe\x00", "Invalid JSON"),
        (b'{"version": 1}', "project: Field required"),
        (b'{"version": 99, "project": "p"}', "version 99 is not supported"),
    ],
)
def test_malformed_messages_name_the_problem(raw, names):
    with pytest.raises(MalformedTask, match=names):
        Task.from_json(raw)


def test_each_bad_field_is_named():
    good = json.loads(make().to_json())
    for field, value, fragment in [
        ("revision", "latest", "revision"),
        ("start", "2026-03-01T10:00:00", "start"),  # naive: no zone
        ("end", "2026-03-01T09:00:00Z", "end must be after start"),
        ("project", "", "project"),
        ("surprise", 1, "surprise: Extra inputs are not permitted"),
    ]:
        document = dict(good, **{field: value})
        with pytest.raises(MalformedTask, match=fragment):
            Task.from_json(json.dumps(document))


def test_messages_of_earlier_releases_with_an_attempt_counter_are_tasks():
    """The ledger counts attempts; a task still carrying the old counter is not malformed."""
    task = make()
    for attempt in (1, 3, 0):
        document = dict(json.loads(task.to_json()), attempt=attempt)
        assert Task.from_json(json.dumps(document)) == task


def test_a_revision_change_keeps_the_window():
    task = make()
    moved = task.at_revision("1800000000")
    assert moved.revision == "1800000000" and moved.window == task.window and moved.id != task.id
