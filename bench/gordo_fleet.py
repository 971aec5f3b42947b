"""A real Gordo 6.0.4 serving a fleet: one built demo model linked N times in a revision
folder, so ``/models`` lists N models and every one of them answers ``/metadata`` and the
anomaly endpoint as the model it links to.

Why links: building 9,000 models with gordo's builder would take hours and gigabytes, yet
what a fleet costs Gordo and Latigo per call (discovery of N names, a metadata document
per model, a model loaded per name in each worker) does not depend on the models being
different. The linked folder is made once and cached under ``.gordo/fleet/<N>/``; the
model it links to is the demo's ``pump-1`` (3 tags), built by ``latigo.demo.gordo``'s own
builder and cached there too.

The server is started by ``latigo.demo.gordo.serve`` with its access log on, so Gordo's
own record of the requests it got can be counted (:meth:`FleetGordo.requests`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from latigo.demo import gordo
from latigo.demo.models import DEMO_PROJECT, demo_models

# where the linked revision folders are cached, one per fleet size
FLEET_HOME = gordo.GORDO_HOME / "fleet"
# the built demo model every fleet name links to: 3 tags, the cheapest call
SOURCE_MODEL = "pump-1"
# a fleet model's name; short, because every name goes into one environment variable
NAME_FORMAT = "pump-{:04d}"
# Linux's limit for one environment string (MAX_ARG_STRLEN): EXPECTED_MODELS must fit in it
ENV_STRING_LIMIT = 131_072
# how long a fleet's Gordo may take to answer /healthcheck (it lists no models at start)
START_TIMEOUT_S = 120.0
# a request line of gunicorn's access log: method, project, model, route, query, status
ACCESS_LINE = re.compile(
    r'"(?P<method>GET|POST) /gordo/v0/(?P<project>[^/ ]+)/(?P<model>[^/? ]+)/(?P<route>[^? ]+)'
    r'(?:\?(?P<query>[^ ]*))? HTTP/[\d.]+" (?P<status>\d{3})'
)
# the revision asked for in a request's query string
REVISION_PARAM = re.compile(r"(?:^|&)revision=(\d+)")


def fleet_names(size: int) -> list[str]:
    return [NAME_FORMAT.format(number) for number in range(size)]


def linked_revision(size: int, source: Path, revision: str = gordo.DEFAULT_REVISION) -> Path:
    """``.gordo/fleet/<size>/models/<revision>/``, a symlink per fleet name to ``source``;
    made once and reused while it holds exactly those links. Made in a staging folder and
    moved into place, so a half-made folder is never served."""
    names = fleet_names(size)
    revision_dir = FLEET_HOME / str(size) / "models" / revision
    target = str(source.absolute())
    if _is_linked(revision_dir, names, target):
        return revision_dir
    revision_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".linking-", dir=FLEET_HOME))
    try:
        for name in names:
            (staging / name).symlink_to(target, target_is_directory=True)
        if revision_dir.exists():
            shutil.rmtree(revision_dir)
        staging.rename(revision_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return revision_dir


def _is_linked(revision_dir: Path, names: list[str], target: str) -> bool:
    if not revision_dir.is_dir():
        return False
    entries = os.listdir(revision_dir)
    return sorted(entries) == names and all(os.readlink(revision_dir / name) == target for name in entries)


@dataclass(frozen=True)
class Request:
    """One line of Gordo's access log."""

    method: str
    project: str
    model: str
    route: str  # "metadata", "anomaly/prediction", "prediction", ...
    revision: str | None
    status: int


@dataclass(frozen=True)
class FleetGordo:
    base_url: str  # http://127.0.0.1:<port>
    project: str
    revision: str
    models: list[str]
    log_file: Path  # gunicorn's log, access lines included
    process: subprocess.Popen
    start_seconds: float  # from starting gunicorn to its first /healthcheck answer

    def mark(self) -> int:
        """A point in the access log: requests after it are counted by :meth:`requests`."""
        return self.log_file.stat().st_size

    def requests(self, since: int = 0, until: int | None = None) -> list[Request]:
        """The model requests Gordo logged between two marks."""
        with self.log_file.open("rb") as log:
            log.seek(since)
            text = log.read(None if until is None else until - since).decode(errors="replace")
        found = []
        for match in ACCESS_LINE.finditer(text):
            revision = REVISION_PARAM.search(match["query"] or "")
            found.append(
                Request(
                    match["method"],
                    match["project"],
                    match["model"],
                    match["route"],
                    revision.group(1) if revision else None,
                    int(match["status"]),
                )
            )
        return found


def metadata_per_model(requests: list[Request]) -> Counter[tuple[str, str | None]]:
    """/metadata requests per (model, revision)."""
    return Counter((request.model, request.revision) for request in requests if request.route == "metadata")


def predictions(requests: list[Request]) -> int:
    return sum(1 for request in requests if request.route.endswith("prediction"))


@contextlib.contextmanager
def fleet_gordo(size: int, folder: Path, workers: int = 1) -> Iterator[FleetGordo]:
    """A Gordo serving ``size`` linked copies of the demo's ``pump-1`` with ``workers``
    gunicorn workers (gthread, 4 threads each, as ``latigo.demo.gordo.serve`` runs it, every
    model kept loaded once asked), its log in ``folder``; stopped at the end."""
    names = fleet_names(size)
    expected = f"EXPECTED_MODELS={json.dumps(names)}"
    if len(expected) >= ENV_STRING_LIMIT:
        raise ValueError(f"{size} model names do not fit in one environment variable ({len(expected)} bytes)")
    venv = gordo.ensure_venv(gordo.DEFAULT_VENV)
    source = [model for model in demo_models() if model["name"] == SOURCE_MODEL]
    built = gordo.build_models(venv, gordo.DEFAULT_ROOT, gordo.DEFAULT_REVISION, source)
    revision_dir = linked_revision(size, built / SOURCE_MODEL)
    port = gordo.free_port()
    log_file = folder / "gordo-fleet.log"
    started = time.perf_counter()
    proc = gordo.serve(
        venv, revision_dir, port, names, log_file, start_timeout=START_TIMEOUT_S, workers=workers, access_log=True
    )
    try:
        yield FleetGordo(
            f"http://127.0.0.1:{port}",
            DEMO_PROJECT,
            gordo.DEFAULT_REVISION,
            names,
            log_file,
            proc,
            time.perf_counter() - started,
        )
    finally:
        gordo.stop(proc)
