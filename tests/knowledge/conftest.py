"""Knowledge tests: the vector index in both of its modes, and helpers.

- `chroma_server` (session): a real Chroma server (`chroma run`) on a free loopback port
  with its files in a temporary folder, stopped at the end of the session.
- `knowledge_index` (each test): the embedded index with its own KNOWLEDGE_CHROMA_PATH
  under the test's tmp_path.
- `chroma_mode` (each test, parametrized "embedded" / "server"): the same test runs once
  on each mode; in server mode CHROMA_URL points at the session's server and the
  organizations' collections are emptied first (the server outlives the test's rollback).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django_tenants.utils import schema_context

from apps.knowledge import store
from apps.knowledge.models import KnowledgeSource
from apps.knowledge.services import PutResult
from apps.tenancy.models import Organization
from tests.conftest import ARTIFACTS, World, free_port

CHROMA = Path(sys.executable).parent / "chroma"


@dataclass
class ChromaServer:
    """`chroma run` on 127.0.0.1:port with its data under `path`; stop() and start() again
    keep the port and the data."""

    path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 60.0) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        log = (ARTIFACTS / f"chroma-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [str(CHROMA), "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the Chroma server did not start; see test-artifacts/chroma-{self.port}.log"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = ChromaServer(path=tmp_path_factory.mktemp("chroma-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def knowledge_index(settings: Any, tmp_path: Path) -> Iterator[Path]:
    """The embedded index, in this test's own folder."""
    path = tmp_path / "chroma"
    settings.CHROMA_URL = ""
    settings.KNOWLEDGE_CHROMA_PATH = str(path)
    store.clients_reset()
    yield path
    store.clients_reset()


def _empty_collections(organizations: list[Organization]) -> None:
    for organization in organizations:
        with schema_context(organization.schema_name):
            store.current_index().drop()


@pytest.fixture(params=["embedded", "server"])
def chroma_mode(request: pytest.FixtureRequest, settings: Any, tmp_path: Path, world: World) -> Iterator[str]:
    """Runs the test on the embedded index and on the Chroma server."""
    settings.KNOWLEDGE_CHROMA_PATH = str(tmp_path / "chroma")
    if request.param == "server":
        server: ChromaServer = request.getfixturevalue("chroma_server")
        settings.CHROMA_URL = server.url
    else:
        settings.CHROMA_URL = ""
    store.clients_reset()
    if request.param == "server":
        _empty_collections([world.alpha, world.beta])
    yield str(request.param)
    store.clients_reset()


# --- knowledge made through the real services ---------------------------------------------------


def owner_of(world: World, organization: Organization) -> Any:
    return world.alice if organization == world.alpha else world.bob


def make_source(
    world: World, organization: Organization, *, kind: str = "document", name: str = "notes"
) -> KnowledgeSource:
    """A source of `organization`; call it inside the organization's schema."""
    from apps.knowledge import services
    from apps.tenancy.audit import Actor

    return services.source_create(
        organization=organization, kind=kind, name=name, actor=Actor(user=owner_of(world, organization))
    )


def put_file(source: KnowledgeSource, path: str, text: str, commit: str = "") -> PutResult:
    """The file chunked as ingestion chunks it, and put under `path`."""
    from apps.knowledge import services
    from apps.knowledge.chunking import chunk_file

    return services.chunks_put(
        source=source, path=path, chunks=chunk_file(path, text, source=f"source:{source.pk}"), commit=commit
    )


@pytest.fixture
def own_chroma_server(tmp_path: Path, settings: Any) -> Iterator[ChromaServer]:
    """A Chroma server of this test alone (it may stop and start it); CHROMA_URL points at it."""
    server = ChromaServer(path=tmp_path / "own-chroma")
    server.start()
    settings.CHROMA_URL = server.url
    store.clients_reset()
    yield server
    server.stop()
    store.clients_reset()
