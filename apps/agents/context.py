"""What the model reads at each step, rebuilt from the run's events.

    system:    the profile's prompt template (agent.system by default, at its pinned
               version) rendered with the task, the tools and the profile's role, then
               the workspace's environment facts (OS, toolchain, env var names, the
               repository's instructions file) gathered once, at the run's first step;
    user:      the task, with the organization's knowledge most relevant to it (the
               knowledge app's context hook, once per run) — pinned, so it is never
               windowed out, and the same at every step;
    then:      each step as the assistant's tool call and the tool's result (an answer
               that was no valid tool call: its text, then the error the agent got).

The conversation is fitted to the chosen model's context window by the gateway's
window management (apps/llm/context.py): the oldest steps go first, long outputs are
cut in the middle with a marker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.cache import cache

from apps.agents.models import AgentRun, Event
from apps.agents.tools.registry import Toolbox, wire_name
from apps.llm.types import Message, ToolCall
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

WORKSPACE_PATH = "/workspace"
ENVIRONMENT_HEADING = "About the workspace (gathered from it when the run started):"


def _declared(name: str, version: int | None) -> set[str] | None:
    """The variables the template declares (None: unknown, pass them all)."""
    from apps.prompts import selectors as prompt_selectors
    from apps.prompts.file_defaults import default_get

    stored = prompt_selectors.template_by_name(name=name)
    if stored is not None:
        chosen = (
            stored.current_version
            if version is None
            else prompt_selectors.version_get(template=stored, number=version)
        )
        if chosen is None:
            return None
        return {str(declaration["name"]) for declaration in chosen.variables}
    default = default_get(name)
    return {str(declaration["name"]) for declaration in default.variables} if default is not None else None


class _Recent:
    """A few values of this process, the least recently used forgotten first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


# The runs this process drove lately: their events so far and their system prompts. A
# worker drives a run's steps one after another (apps/agents/loop.py), and reading the
# whole history and the prompt template again at each step was a quarter of the
# platform's time per step (bench/agents.py under py-spy).
_histories = _Recent(8)
_prompts = _Recent(64)


def run_events(run: AgentRun) -> list[Event]:
    """The run's events in order: those this process read before (events never change:
    apps/agents/migrations/0002), then the newer ones from the table."""
    key = str(run.pk)
    known: list[Event] | None = _histories.get(key)
    if known is None:
        known = list(Event.objects.filter(run_id=run.pk).order_by("seq"))
    else:
        last = known[-1].seq if known else 0
        newer = list(Event.objects.filter(run_id=run.pk, seq__gt=last).order_by("seq"))
        if newer and newer[0].seq != last + 1:  # cannot happen with gap-free numbering; read afresh
            newer = list(Event.objects.filter(run_id=run.pk).order_by("seq"))
            known = []
        known = known + newer
    _histories.put(key, known)
    return known


def run_system_prompt(*, run: AgentRun, toolbox: Toolbox) -> str:
    """system_prompt(), rendered once per run and set of tools and kept (in this process and
    the cache, whose keys carry the schema): the same text at every step, which providers'
    prompt caches key on, even if the template gets a new version mid-run."""
    names = "\n".join(sorted(toolbox.names()))
    key = f"agents:system-prompt:{run.pk}:{hashlib.sha256(names.encode()).hexdigest()[:16]}"
    text = _prompts.get(key)
    if text is None:
        text = cache.get(key)
    if not isinstance(text, str):
        text = system_prompt(run=run, toolbox=toolbox)
        cache.set(key, text, KNOWLEDGE_BLOCK_SECONDS)
    _prompts.put(key, text)
    return text


def system_prompt(*, run: AgentRun, toolbox: Toolbox) -> str:
    from apps.prompts.services import template_render

    name = str(run.settings.get("prompt_template") or "agent.system")
    version = run.settings.get("prompt_version")
    values: dict[str, Any] = {
        "task": run.task,
        "workspace_path": WORKSPACE_PATH,
        "tools": [{"name": name, "description": spec.description} for name, spec in toolbox.specs.items()],
        "instructions": str(run.settings.get("role") or ""),
        "repository": str(run.workspace.repo_url if run.workspace else "") or "",
    }
    declared = _declared(name, version)
    if declared is not None:
        values = {key: value for key, value in values.items() if key in declared}
    text = template_render(name, version, values).text.strip()
    facts = run.settings.get("environment") or {}
    if not facts:
        return text
    from apps.agents.tools.environment import environment_text

    return f"{text}\n\n{ENVIRONMENT_HEADING}\n{environment_text(facts, toolbox.names())}"


# A day: longer than any run's step gap; a block evicted early is only computed again.
KNOWLEDGE_BLOCK_SECONDS = 24 * 3600


def knowledge_block(*, organization: Organization, run: AgentRun) -> str:
    """The knowledge hook's block for the run, on its task: computed at its first step and
    kept (in the cache, whose keys carry the schema), so the pinned first message is the same
    at every step. A block that changed per step cost an embedding, an index query and
    PostgreSQL reads each step (a sixth of a step's platform time in bench/agents.py's
    profile) and changed the prompt's prefix, which providers' prompt caches key on; the
    agent searches further with its knowledge_search tool. Empty when the hook fails (a run
    never stops for want of knowledge). Empty too when the plan lacks the `knowledge`
    feature (this process's reading of it: no query per step)."""
    from apps.billing.features import feature_enabled_cached
    from apps.knowledge.agent import context_for

    if not feature_enabled_cached(organization_id=organization.pk, key="knowledge"):
        return ""
    key = f"agents:knowledge-block:{run.pk}"
    block = _prompts.get(key)
    if block is None:
        block = cache.get(key)
    if isinstance(block, str):
        _prompts.put(key, block)
        return block
    try:
        block = context_for(organization, str(run.pk), run.task, int(settings.AGENTS_KNOWLEDGE_TOKENS))
    except Exception:
        logger.exception("Run %s: no knowledge context", run.pk)
        return ""
    cache.set(key, block, KNOWLEDGE_BLOCK_SECONDS)
    _prompts.put(key, block)
    return block


def history_messages(events: Sequence[Event]) -> list[Message]:
    """Each step's action and observation as chat messages (messages of the member after
    the task too); state and error events are the platform's, not the model's."""
    messages: list[Message] = []
    for event in events:
        payload = event.payload
        if event.kind == Event.Kind.MESSAGE:
            text = str(payload.get("text") or "")
            if payload.get("role") == "assistant":
                messages.append(Message(role="assistant", content=text))
            else:
                messages.append(Message(role="user", content=text))
        elif event.kind == Event.Kind.ACTION:
            thought = str(payload.get("thought") or "")
            if payload.get("valid", True) and payload.get("tool") and payload.get("call_id"):
                call = ToolCall(
                    id=str(payload["call_id"]),
                    name=wire_name(str(payload["tool"])),
                    arguments=json.dumps(payload.get("arguments") or {}),
                )
                messages.append(Message(role="assistant", content=thought or None, tool_calls=(call,)))
            else:
                said = thought
                if payload.get("tool"):
                    raw = str(payload.get("raw_arguments") or json.dumps(payload.get("arguments") or {}))
                    said = f"{thought}\n[called {payload['tool']} with {raw}]".strip()
                messages.append(Message(role="assistant", content=said or "(no answer)"))
        elif event.kind == Event.Kind.OBSERVATION:
            output = str(payload.get("output") or "")
            if payload.get("call_id") and payload.get("valid", True):
                messages.append(
                    Message(
                        role="tool",
                        content=output or "(no output)",
                        tool_call_id=str(payload["call_id"]),
                        name=wire_name(str(payload.get("tool") or "")),
                    )
                )
            else:
                messages.append(Message(role="user", content=output or "(no output)"))
    return _answered(messages)


def _answered(messages: list[Message]) -> list[Message]:
    """Without a tool call's result (the step in progress), providers refuse the call:
    such a call is left out."""
    answered = {message.tool_call_id for message in messages if message.role == "tool"}
    return [
        message
        for message in messages
        if not (message.tool_calls and any(call.id not in answered for call in message.tool_calls))
    ]


def conversation(
    *, organization: Organization, run: AgentRun, events: Sequence[Event], toolbox: Toolbox
) -> list[Message]:
    """The whole conversation for the next step, before window management."""
    system = Message(role="system", content=run_system_prompt(run=run, toolbox=toolbox))
    history = history_messages(events)
    # The task message is the first user message; the knowledge block joins it, pinned.
    first_user = next((index for index, message in enumerate(history) if message.role == "user"), None)
    if first_user is None:
        history.insert(0, Message(role="user", content=run.task))
        first_user = 0
    knowledge = knowledge_block(organization=organization, run=run)
    task_message = history[first_user]
    content = task_message.content or ""
    if knowledge:
        content = f"{content}\n\n{knowledge}"
    history[first_user] = Message(role="user", content=content, pinned=True)
    return [system, *history]
