"""Fixtures of the agents tests (each helper module names what it provides)."""

from tests.agents.engine import _distinct_sandbox_ids, agent_fake, agent_llm, llm, sample_workspace  # noqa: F401 (fixtures)
