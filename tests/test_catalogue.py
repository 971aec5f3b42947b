"""The model catalogue: metadata asked of Gordo once per model and revision, whatever the
number of processes, counted in a real Gordo's access log.

The racing processes are real executor processes (and, for a race that is sure to happen,
threads with a catalogue and an engine each, which share nothing but the database, as
processes do). The database is real, SQLite and PostgreSQL. Where a Gordo must fail or
hang at a chosen moment, a stand-in model source does, and says so.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from latigo import db
from latigo.catalogue import Catalogue, decode, encode
from latigo.config import GordoConfig
from latigo.demo import gordo
from latigo.errors import Unavailable
from latigo.providers.models import ModelMetadata
from latigo.providers.models.gordo import GordoModels
from latigo.schema import ledger, model_catalogue
from tests.clock import Clock

# a second revision of the same models, served beside the session's
OTHER_REVISION = "1900000000"
# long enough for any Gordo call here: only the hang test lets a claim lapse
CLAIM = timedelta(seconds=30)
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
# the path of a metadata request in gunicorn's access log: model and revision
METADATA_REQUEST = re.compile(r'"GET /gordo/v0/demo/([^/]+)/metadata\?revision=(\d+) HTTP')


@dataclass
class LoggedGordo:
    """A light Gordo serving the session's models at two revisions, every request logged."""

    base_url: str
    log_file: Path
    models: list[str]
    revisions: tuple[str, str]

    def mark(self) -> int:
        return self.log_file.stat().st_size

    def metadata_calls(self, since: int) -> Counter[tuple[str, str]]:
        with self.log_file.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
        return Counter(match.groups() for match in METADATA_REQUEST.finditer(text))


@pytest.fixture(scope="module")
def logged_gordo(gordo_server, tmp_path_factory) -> Iterator[LoggedGordo]:
    home = tmp_path_factory.mktemp("logged-gordo")
    root = home / "models"
    shutil.copytree(gordo_server.revision_dir, root / gordo_server.revision)
    shutil.copytree(gordo_server.revision_dir, root / OTHER_REVISION)
    port = gordo.free_port()
    log_file = home / "gunicorn.log"
    models = sorted(gordo_server.models)
    # the newest folder is the latest revision; the session's stays reachable by ?revision=
    proc = gordo.serve(gordo_server.venv_dir, root / OTHER_REVISION, port, models, log_file, access_log=True)
    try:
        yield LoggedGordo(f"http://127.0.0.1:{port}", log_file, models, (gordo_server.revision, OTHER_REVISION))
    finally:
        gordo.stop(proc)


def catalogue_on(url: str, source, **settings) -> Catalogue:
    engine = db.create_engine(url)
    return Catalogue(source, engine, **{"claim": CLAIM, "memory_ttl": timedelta(minutes=10), **settings})


# -- the stored entry ---------------------------------------------------------------------

NAMES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10)


@given(
    st.lists(NAMES, min_size=1, max_size=5, unique=True),
    st.lists(NAMES, min_size=1, max_size=5, unique=True),
    st.integers(1, 10**6),
    st.integers(0, 1000),
    st.integers(1, 1000),
)
def test_an_entry_reads_back_as_the_metadata_it_was_written_from(tags, targets, seconds, offset, min_rows):
    metadata = ModelMetadata("p", "m", "7", tuple(tags), tuple(targets), timedelta(seconds=seconds), offset, min_rows)
    assert decode("p", "m", "7", encode(metadata)) == metadata


@pytest.mark.parametrize("text", ['{"format": 0, "tags": []}', "not json", "[1, 2]", '{"format": 1}', "null"])
def test_an_entry_of_another_layout_or_unreadable_is_fetched_again(text):
    assert decode("p", "m", "7", text) is None


# -- once per model and revision ----------------------------------------------------------


def test_processes_asking_at_once_make_one_call_per_model_and_revision(database_url, logged_gordo):
    db.upgrade(db.create_engine(database_url))
    source = GordoModels(GordoConfig(base_url=logged_gordo.base_url, read_timeout=30))
    catalogues = [catalogue_on(database_url, source) for _ in range(6)]
    revision = logged_gordo.revisions[0]
    start = threading.Barrier(len(catalogues))
    answers: list[list[ModelMetadata]] = []

    def ask(catalogue: Catalogue, seed: int) -> None:
        order = random.Random(seed).sample(logged_gordo.models, len(logged_gordo.models))
        start.wait()
        answers.append(sorted((catalogue.metadata("demo", name, revision) for name in order), key=str))

    mark = logged_gordo.mark()
    threads = [threading.Thread(target=ask, args=(catalogue, n)) for n, catalogue in enumerate(catalogues)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert logged_gordo.metadata_calls(mark) == {(name, revision): 1 for name in logged_gordo.models}
    assert len(answers) == len(catalogues) and all(answer == answers[0] for answer in answers)
    assert {metadata.model for metadata in answers[0]} == set(logged_gordo.models)


def test_a_new_revision_is_asked_once_and_the_old_one_is_still_known(sqlite_url, logged_gordo):
    db.upgrade(db.create_engine(sqlite_url))
    source = GordoModels(GordoConfig(base_url=logged_gordo.base_url, read_timeout=30))
    old, new = logged_gordo.revisions
    mark = logged_gordo.mark()
    first = catalogue_on(sqlite_url, source)
    assert first.metadata("demo", "pump-1", old).revision == old
    assert first.metadata("demo", "pump-1", new).revision == new
    # the old revision again (a backfill task planned before the change), and a fresh process
    assert first.metadata("demo", "pump-1", old).revision == old
    assert catalogue_on(sqlite_url, source).metadata("demo", "pump-1", new).revision == new

    assert logged_gordo.metadata_calls(mark) == {("pump-1", old): 1, ("pump-1", new): 1}


def test_executor_processes_draining_a_backfill_ask_once_per_model(tmp_path, logged_gordo):
    url = f"sqlite:///{tmp_path / 'latigo.db'}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"database: {{url: '{url}'}}\n"
        f"models: {{base_url: '{logged_gordo.base_url}', projects: [demo], read_timeout: 30}}\n"
        # one task per window: many tasks of each model in the queue at once
        "schedule: {initial_backfill: 1d, max_task_span: 30m}\n"
        "queue: {type: sql, poll_interval: 0.05s}\n"
        "metrics: {port: 0}\n"
    )
    latigo = [sys.executable, "-m", "latigo", "--config", str(config)]
    subprocess.run([*latigo, "scheduler", "--once"], check=True, capture_output=True, timeout=120)
    mark = logged_gordo.mark()
    executors = [
        subprocess.Popen([*latigo, "executor", "--until-idle"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for process in executors:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors.decode(errors="replace")[-2000:]

    with db.create_engine(url).connect() as connection:
        states = Counter(connection.execute(select(ledger.c.state)).scalars())
    assert set(states) == {"no_data"} and states["no_data"] >= 48 * len(logged_gordo.models)
    latest = logged_gordo.revisions[1]
    assert logged_gordo.metadata_calls(mark) == {(name, latest): 1 for name in logged_gordo.models}


# -- failures and hangs (a stand-in source fails or hangs at the chosen moment) ---------


class Source:
    """Stands in for Gordo where it must fail or hang at a chosen call: answers ``metadata``
    of any model, after raising ``failures`` errors, and first waiting for ``release`` if set."""

    def __init__(self, failures: int = 0, release: threading.Event | None = None) -> None:
        self.calls = 0
        self.failures = failures
        self.release = release
        self.called = threading.Event()

    def metadata(self, project: str, model: str, revision: str) -> ModelMetadata:
        self.calls += 1
        self.called.set()
        if self.release is not None:
            self.release.wait(timeout=60)
        if self.calls <= self.failures:
            raise Unavailable("gordo", "Gordo answered 503")
        return ModelMetadata(project, model, revision, ("A", "B"), ("B",), timedelta(minutes=10))


def test_a_failed_fetch_stores_nothing_and_the_next_window_asks_again(sqlite_url):
    db.upgrade(db.create_engine(sqlite_url))
    source = Source(failures=1)
    catalogue = catalogue_on(sqlite_url, source)
    with pytest.raises(Unavailable):
        catalogue.metadata("demo", "pump-1", "1")
    other = catalogue_on(sqlite_url, source)
    assert other.metadata("demo", "pump-1", "1").tags == ("A", "B")
    assert source.calls == 2
    with db.create_engine(sqlite_url).connect() as connection:
        [(entry, claimed_until)] = connection.execute(select(model_catalogue.c.entry, model_catalogue.c.claimed_until))
    assert decode("demo", "pump-1", "1", entry) is not None and claimed_until is None


def test_a_claimant_that_hangs_is_taken_over_once_its_claim_lapses(sqlite_url):
    db.upgrade(db.create_engine(sqlite_url))
    hung = Source(release=threading.Event())
    claimant = catalogue_on(sqlite_url, hung, claim=timedelta(seconds=0.5))
    thread = threading.Thread(target=claimant.metadata, args=("demo", "pump-1", "1"))
    thread.start()
    try:
        assert hung.called.wait(timeout=30)
        answering = Source()
        waiter = catalogue_on(sqlite_url, answering, claim=timedelta(seconds=0.5))
        assert waiter.metadata("demo", "pump-1", "1").model == "pump-1"
        assert answering.calls == 1
    finally:
        hung.release.set()
        thread.join()


def test_memory_is_trusted_for_its_ttl_then_the_table_is_read_again(sqlite_url):
    engine = db.create_engine(sqlite_url)
    db.upgrade(engine)
    clock = Clock(NOW)
    source = Source()
    catalogue = catalogue_on(sqlite_url, source, memory_ttl=timedelta(minutes=10), clock=clock)
    catalogue.metadata("demo", "pump-1", "1")
    with engine.begin() as connection:  # an operator deletes the entry: Gordo is asked again
        connection.execute(delete(model_catalogue))

    clock.advance(timedelta(minutes=9))
    catalogue.metadata("demo", "pump-1", "1")
    assert source.calls == 1
    clock.advance(timedelta(minutes=1))
    catalogue.metadata("demo", "pump-1", "1")
    assert source.calls == 2


def test_an_entry_of_another_layout_is_replaced(sqlite_url):
    engine = db.create_engine(sqlite_url)
    db.upgrade(engine)
    source = Source()
    catalogue_on(sqlite_url, source).metadata("demo", "pump-1", "1")
    with engine.begin() as connection:
        connection.execute(update(model_catalogue).values(entry='{"format": 0}'))

    assert catalogue_on(sqlite_url, source).metadata("demo", "pump-1", "1").tags == ("A", "B")
    assert source.calls == 2
    with engine.connect() as connection:
        entry = connection.execute(select(model_catalogue.c.entry)).scalar_one()
    assert decode("demo", "pump-1", "1", entry) is not None
