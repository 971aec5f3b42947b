"""A fleet of N models for scheduler benchmarks and scale tests.

No Gordo here can serve thousands of models (each is a trained model on disk and in
memory), so discovery is answered from a list: only what cannot run here is stood in for.
Everything downstream of discovery (ledger, queue, database) is real. It lives here, with
the demo's other stand-ins, because both the benchmarks and the tests use it, and neither
imports the other.
"""

from __future__ import annotations

from latigo.providers.models import ModelInformationProvider, ModelMetadata

# the revision every model of the fleet is at
FLEET_REVISION = "1769904000"


class Fleet(ModelInformationProvider):
    def __init__(self, size: int, project: str = "fleet") -> None:
        self.project = project
        self.names = [f"machine-{number:06d}" for number in range(size)]

    def latest_revision(self, project: str) -> str:
        return FLEET_REVISION

    def models(self, project: str, revision: str | None = None) -> list[str]:
        return list(self.names)

    def expected_models(self, project: str) -> list[str]:
        return list(self.names)

    def metadata(self, project: str, model: str, revision: str) -> ModelMetadata:
        raise NotImplementedError("the fleet only answers discovery")
