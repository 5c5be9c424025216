"""Fixtures for the LLM gateway's tests: loopback fakes of the providers' APIs, each
yielding an object with `base_url`, `script(...)` and `requests` (tests/fakes/llm_fake.py)."""

from collections.abc import Iterator

import pytest

from tests.fakes.anthropic_server import FakeAnthropic, anthropic_server
from tests.fakes.gemini_server import FakeGemini, gemini_server
from tests.fakes.openai_server import FakeOpenAI, openai_server
from tests.llm.gateway_helpers import openai_platform  # noqa: F401 (a fixture)


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with openai_server() as fake:
        yield fake


@pytest.fixture
def anthropic_fake() -> Iterator[FakeAnthropic]:
    with anthropic_server() as fake:
        yield fake


@pytest.fixture
def gemini_fake() -> Iterator[FakeGemini]:
    with gemini_server() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _gateway_state_reset() -> Iterator[None]:
    """Each test starts with no gateway state left by another: snapshots of the catalog
    and organizations' settings (a rolled-back test's rows must not linger here)."""
    from apps.llm.gateway import gateway_reset

    gateway_reset()
    yield
    gateway_reset()
