"""What agents use of knowledge: the `knowledge_search` tool and the context hook.

    TOOL                                            # apps.llm.types.Tool: name, description, JSON Schema
    knowledge_search(organization, run_id, {"query": "how are migrations run?", "k": 5})  # -> text
    context_for(organization, run_id, step_text)    # -> a block for the step's context, within budget
    run_start(organization=org, run_id=run_id, task_text=task)  # preload; run_end(...) distils and frees

Both look in the run's session memory first (its notes, kept observations, what it
retrieved before), then in the organization's knowledge; global results are copied
into the session (so the next look is local) and remembered as retrieved (credited if
the run succeeds). Each result names where it comes from: path:lines and the source
(or the run, for experience), so the agent can cite and open it.

The organization's index unreachable never fails a step: the tool says so in its text,
and the hook gives the session's results alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from django.conf import settings

from apps.core.errors import Invalid
from apps.knowledge import services, store, sync
from apps.knowledge.models import KnowledgeSource
from apps.knowledge.session import SNIPPET, SessionHit, session_end, session_for
from apps.llm.tokens import estimate_text_tokens
from apps.llm.types import Tool
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

TOOL_NAME: Final = "knowledge_search"
TOOL_MAX_K: Final = 10
# Below this cosine similarity a result is noise in a step's context (the tool, asked
# explicitly, still shows what it has).
CONTEXT_MIN_SIMILARITY: Final = 0.3
CONTEXT_HEADER: Final = "Relevant knowledge (most relevant first; cite the location when you use it):"

TOOL: Final = Tool(
    name=TOOL_NAME,
    description=(
        "Search what this organization knows: its indexed repositories and documents, and"
        " experience from earlier runs (what worked, what failed), plus your own notes from this"
        " run. Returns the most relevant passages, each with where it comes from (path:lines and"
        " source). Ask in plain words, e.g. 'how are database migrations run?'."
    ),
    parameters={
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "minLength": 1,
                "maxLength": services.MAX_QUERY_CHARS,
                "description": "What to look for, in plain words or code identifiers.",
            },
            "k": {
                "type": "integer",
                "minimum": 1,
                "maximum": TOOL_MAX_K,
                "default": 5,
                "description": "How many results.",
            },
            "kind": {
                "type": "string",
                "enum": list(KnowledgeSource.Kind.values),
                "description": "Only this kind: repository (code), document, experience (past runs), note.",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)


@dataclass(frozen=True)
class Found:
    """One result for the agent: from the session or the organization's knowledge."""

    text: str
    label: str  # where it comes from, for citing
    similarity: float
    chunk_key: str | None


def _from_session(hit: SessionHit) -> Found:
    item = hit.item
    if item.kind == SNIPPET:
        meta = item.metadata
        label = f"{meta.get('location') or meta.get('path') or 'knowledge'} ({meta.get('kind', 'knowledge')}:"
        label += f" {meta.get('source', '')})"
    else:
        label = f"this run's {item.kind}"
    return Found(text=item.text, label=label, similarity=hit.similarity, chunk_key=item.chunk_key)


def _session_allowed(hit: SessionHit, kinds: list[str] | None) -> bool:
    """With kinds asked for, only what the session retrieved of those kinds."""
    if not kinds:
        return True
    return hit.item.kind == SNIPPET and hit.item.metadata.get("kind") in kinds


def _label(hit: services.Hit) -> str:
    if hit.kind == KnowledgeSource.Kind.EXPERIENCE:
        return f"{hit.title or hit.path} (experience of run {hit.run_id})" if hit.run_id else hit.title
    commit = f" @ {hit.commit[:12]}" if hit.commit else ""
    return f"{hit.location} ({hit.kind}: {hit.source_name}{commit})"


def _gather(
    organization: Organization,
    run_id: str,
    query: str,
    *,
    k: int,
    kinds: list[str] | None,
    min_similarity: float,
) -> tuple[list[Found], str | None]:
    """Session results first, then global ones not already among them; and the reason the
    organization's index could not be asked, if it could not."""
    memory = session_for(run_id)
    local = [
        _from_session(hit)
        for hit in memory.search(query, k=k)
        if hit.similarity >= min_similarity and _session_allowed(hit, kinds)
    ]
    seen = {found.chunk_key for found in local if found.chunk_key}
    unavailable = None
    remote: list[Found] = []
    try:
        hits = services.search(organization=organization, query=query, k=k, kinds=kinds)
    except store.StoreUnavailable as exc:
        unavailable = exc.reason
        hits = []
    for hit in hits:
        if hit.similarity < min_similarity:
            continue
        memory.add(hit.text, kind=SNIPPET, metadata=sync.provenance(hit), chunk_key=hit.key)
        if hit.key in seen:
            continue
        remote.append(Found(text=hit.text, label=_label(hit), similarity=hit.similarity, chunk_key=hit.key))
    return [*local, *remote][:k], unavailable


def _arguments(arguments: Any) -> tuple[str, int, list[str] | None]:
    if not isinstance(arguments, dict):
        raise Invalid("The arguments are an object with `query` (and optionally `k`, `kind`).")
    unknown = sorted(set(arguments) - {"query", "k", "kind"})
    if unknown:
        raise Invalid(f"Unknown argument {unknown[0]!r}; the arguments: query, k, kind.", field=unknown[0])
    query = arguments.get("query")
    if not isinstance(query, str):
        raise Invalid("`query` is the text to look for.", field="query")
    query = services.clean_query(query)
    k = arguments.get("k", 5)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= TOOL_MAX_K:
        raise Invalid(f"`k` is a whole number from 1 to {TOOL_MAX_K}.", field="k")
    kind = arguments.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise Invalid("`kind` is one of repository, document, experience, note.", field="kind")
    return query, k, services.clean_kinds([kind] if kind else None)


def knowledge_search(organization: Organization, run_id: str, arguments: Any) -> str:
    """The tool's handler: its result as text for the agent. Bad arguments give a text
    saying what to fix (the agent reads it and retries), never an exception."""
    services.check_organization(organization)
    try:
        query, k, kinds = _arguments(arguments)
    except Invalid as exc:
        return f"{TOOL_NAME} error: {exc.message}"
    found, unavailable = _gather(organization, run_id, query, k=k, kinds=kinds, min_similarity=-1.0)
    lines: list[str] = []
    if unavailable:
        lines.append(f"(The organization's knowledge cannot be searched right now: {unavailable})")
    if not found:
        lines.append(f"No knowledge found for {query!r}.")
        return "\n".join(lines)
    for number, item in enumerate(found, start=1):
        lines.append(f"[{number}] {item.label} · similarity {item.similarity:.2f}")
        lines.append(item.text.rstrip())
        lines.append("")
    return "\n".join(lines).rstrip()


def _block(item: Found) -> str:
    return f"--- {item.label}\n{item.text.rstrip()}"


def _cut(text: str, budget: int) -> str:
    """The longest prefix of `text` (at a line end if possible) within `budget` tokens."""
    if estimate_text_tokens(text) <= budget:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits, by bisection on characters
        middle = (low + high + 1) // 2
        if estimate_text_tokens(text[:middle] + " …") <= budget:
            low = middle
        else:
            high = middle - 1
    prefix = text[:low]
    line_end = prefix.rfind("\n")
    if line_end > low // 2:
        prefix = prefix[:line_end]
    return prefix.rstrip() + " …" if prefix.strip() else ""


def context_for(
    organization: Organization,
    run_id: str,
    query: str,
    token_budget: int | None = None,
    *,
    k: int = 8,
) -> str:
    """The hook: a block of the knowledge most relevant to `query` (the task or the
    current step) to put in the agent's context, session results first, then the
    organization's; within `token_budget` tokens (KNOWLEDGE_CONTEXT_TOKENS by default).
    Empty when nothing relevant is known."""
    services.check_organization(organization)
    budget = int(settings.KNOWLEDGE_CONTEXT_TOKENS if token_budget is None else token_budget)
    query = (query or "").strip()[: services.MAX_QUERY_CHARS]
    if not query or budget <= 0:
        return ""
    found, unavailable = _gather(
        organization, run_id, query, k=k, kinds=None, min_similarity=CONTEXT_MIN_SIMILARITY
    )
    if unavailable:
        logger.info("Run %s: context without the organization's knowledge: %s", run_id, unavailable)
    if not found:
        return ""
    parts = [CONTEXT_HEADER]
    used = estimate_text_tokens(CONTEXT_HEADER)
    if used >= budget:
        return ""
    for item in found:
        block = _block(item)
        cost = estimate_text_tokens("\n\n" + block)
        if used + cost <= budget:
            parts.append(block)
            used += cost
            continue
        # The first block that does not fit is cut to what is left, if a useful part fits.
        remaining = budget - used - estimate_text_tokens("\n\n")
        cut = _cut(block, remaining) if remaining > 20 else ""
        if cut and "\n" in cut:
            parts.append(cut)
        break
    if len(parts) == 1:
        return ""
    return "\n\n".join(parts)


def remember(run_id: str, text: str, *, kind: str = "note", keep: bool | None = None, key: str = "") -> None:
    """The agent's note (or an observation worth keeping) into its session memory; `key`
    names it so a later run's note with the same key supersedes it."""
    session_for(run_id).add(text, kind=kind, keep=keep, metadata={"key": key} if key else None)


def run_start(*, organization: Organization, run_id: str, task_text: str, k: int = 5) -> int:
    """At a run's start: the relevant knowledge preloaded into its session; how much."""
    return len(sync.preload(organization=organization, run_id=run_id, task_text=task_text, k=k))


def run_end(*, organization: Organization, run_id: str, outcome: str, summary: str = "") -> sync.DistilResult:
    """At a run's end: its session distilled into experience, then freed."""
    try:
        return sync.distil(organization=organization, run_id=run_id, outcome=outcome, summary=summary)
    finally:
        session_end(run_id)
