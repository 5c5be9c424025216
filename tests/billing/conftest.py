"""Fixtures the billing tests share with other apps' tests: the LLM gateway's (the fake
OpenAI API as the platform's provider, gateway state reset around each test) and the
workspaces' (real sandboxes on the test runtime, destroyed afterwards)."""

from tests.llm.conftest import _gateway_state_reset, openai_fake  # noqa: F401 (fixtures)
from tests.llm.gateway_helpers import openai_platform  # noqa: F401 (a fixture)
from tests.workspaces.conftest import workspaces_cleanup  # noqa: F401 (a fixture)
