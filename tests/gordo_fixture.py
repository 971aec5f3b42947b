"""Session fixture ``gordo_server``: a real Gordo 6.0.4 server with the demo models, on 127.0.0.1.

Tests that talk to Gordo should meet the real server, not a mock of it. The Gordo
virtualenv and the built models are cached under ``<repo>/.gordo/`` (redone only when
their pins, configs or data generator change; the first run creates the virtualenv in
about half a minute), then the revision is copied into a session temp folder and served
from there, so tests may add revisions or models there without touching the cache or a
developer's server. Import it from conftest.py::

    from tests.gordo_fixture import gordo_server  # noqa: F401
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from latigo.demo import gordo
from latigo.demo.models import DEMO_PROJECT, model_names


@dataclass(frozen=True)
class GordoServer:
    """Where the session's Gordo server is and what it serves."""

    base_url: str  # http://127.0.0.1:<port>, no trailing slash
    project: str  # gordo project of the demo models
    revision: str  # revision served as latest
    models: list[str]  # names of the models built and expected
    revision_dir: Path  # folder of the served revision (MODEL_COLLECTION_DIR)
    root: Path  # collection root: sibling folders of revision_dir are other revisions
    port: int
    log_file: Path  # gunicorn's log
    venv_dir: Path  # the Gordo virtualenv, for building more models with gordo.build_models

    @property
    def project_url(self) -> str:
        """``<base_url>/gordo/v0/<project>``, the prefix of every model route."""
        return f"{self.base_url}/gordo/v0/{self.project}"


@pytest.fixture(scope="session")
def gordo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GordoServer]:
    """Start Gordo with the demo models for the test session; stop it at the end."""
    venv_dir = gordo.ensure_venv(gordo.DEFAULT_VENV)
    cached = gordo.build_models(venv_dir, gordo.DEFAULT_ROOT, gordo.DEFAULT_REVISION)
    session_dir = tmp_path_factory.mktemp("gordo")
    root = session_dir / "models"
    revision_dir = root / gordo.DEFAULT_REVISION
    shutil.copytree(cached, revision_dir)
    log_file = session_dir / "gunicorn.log"
    names = model_names()
    port = gordo.free_port()
    proc = gordo.serve(venv_dir, revision_dir, port, names, log_file)
    try:
        yield GordoServer(
            base_url=f"http://127.0.0.1:{port}",
            project=DEMO_PROJECT,
            revision=gordo.DEFAULT_REVISION,
            models=names,
            revision_dir=revision_dir,
            root=root,
            port=port,
            log_file=log_file,
            venv_dir=venv_dir,
        )
    finally:
        gordo.stop(proc)
