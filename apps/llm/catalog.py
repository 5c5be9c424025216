"""The model catalog shipped with Agentyard, synced into the database (LlmModel) by
a data migration and `manage.py llm_catalog_sync` (idempotent: it updates what
changed here, adds what is new, and marks rows no longer listed `listed=False`).

Names are ours; `provider_model` is what the provider calls the model. Prices are
US dollars per million tokens, as the providers published them. Context windows
are tokens. Tier: what `auto` chooses between ("small" for simple requests,
"large" for hard ones; see apps/llm/router.py).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

# Names that stand for another catalog entry.
ALIASES: dict[str, str] = {"local": "smollm2-135m"}

LOCAL_MODEL = "smollm2-135m"
LOCAL_EMBEDDING_MODEL = "smollm2-135m-embedding"
AUTO_MODEL = "auto"


def _entry(
    name: str,
    provider: str,
    provider_model: str,
    *,
    context_window: int,
    prices: tuple[str, str, str],
    tools: bool = True,
    vision: bool = False,
    json: bool = True,
    embeddings: bool = False,
    tier: str = "small",
    max_output_tokens: int = 4096,
    fallbacks: tuple[str, ...] = (),
    description: str = "",
    enabled_by_default: bool = True,
) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "provider_model": provider_model,
        "description": description,
        "context_window": context_window,
        "max_output_tokens": max_output_tokens,
        "supports_tools": tools,
        "supports_vision": vision,
        "supports_json": json,
        "supports_embeddings": embeddings,
        "input_price": Decimal(prices[0]),
        "output_price": Decimal(prices[1]),
        "cached_input_price": Decimal(prices[2]),
        "tier": tier,
        "enabled_by_default": enabled_by_default,
        "fallbacks": list(fallbacks),
    }


CATALOG: tuple[dict[str, Any], ...] = (
    # In-process through llama.cpp: works with no API key at all.
    _entry(
        LOCAL_MODEL,
        "local",
        "SmolLM2-135M-Instruct",
        context_window=8192,
        max_output_tokens=1024,
        prices=("0", "0", "0"),
        # Tool calls and JSON are grammar-constrained by llama.cpp (apps/llm/providers/local.py).
        description="SmolLM2 135M Instruct, quantized GGUF, in process",
    ),
    _entry(
        LOCAL_EMBEDDING_MODEL,
        "local",
        "SmolLM2-135M-Instruct",
        context_window=512,
        prices=("0", "0", "0"),
        tools=False,
        json=False,
        embeddings=True,
        description="Mean-pooled SmolLM2 135M hidden states, in process (the semantic cache with no key)",
    ),
    # OpenAI
    _entry(
        "gpt-4o-mini",
        "openai",
        "gpt-4o-mini",
        context_window=128_000,
        max_output_tokens=16_384,
        prices=("0.15", "0.60", "0.075"),
        vision=True,
        fallbacks=("gpt-4.1-mini", "claude-3-5-haiku", "gemini-2.0-flash"),
    ),
    _entry(
        "gpt-4o",
        "openai",
        "gpt-4o",
        context_window=128_000,
        max_output_tokens=16_384,
        prices=("2.50", "10.00", "1.25"),
        vision=True,
        tier="large",
        fallbacks=("gpt-4.1", "claude-sonnet-4", "gemini-2.5-pro"),
    ),
    _entry(
        "gpt-4.1",
        "openai",
        "gpt-4.1",
        context_window=1_047_576,
        max_output_tokens=32_768,
        prices=("2.00", "8.00", "0.50"),
        vision=True,
        tier="large",
        fallbacks=("claude-sonnet-4", "gemini-2.5-pro"),
    ),
    _entry(
        "gpt-4.1-mini",
        "openai",
        "gpt-4.1-mini",
        context_window=1_047_576,
        max_output_tokens=32_768,
        prices=("0.40", "1.60", "0.10"),
        vision=True,
        fallbacks=("gemini-2.5-flash",),
    ),
    _entry(
        "gpt-4.1-nano",
        "openai",
        "gpt-4.1-nano",
        context_window=1_047_576,
        max_output_tokens=32_768,
        prices=("0.10", "0.40", "0.025"),
        fallbacks=("gpt-4.1-mini",),
    ),
    _entry(
        "o3-mini",
        "openai",
        "o3-mini",
        context_window=200_000,
        max_output_tokens=100_000,
        prices=("1.10", "4.40", "0.55"),
        tier="large",
        fallbacks=("gpt-4.1",),
    ),
    _entry(
        "text-embedding-3-small",
        "openai",
        "text-embedding-3-small",
        context_window=8191,
        prices=("0.02", "0", "0"),
        tools=False,
        json=False,
        embeddings=True,
    ),
    _entry(
        "text-embedding-3-large",
        "openai",
        "text-embedding-3-large",
        context_window=8191,
        prices=("0.13", "0", "0"),
        tools=False,
        json=False,
        embeddings=True,
    ),
    # Anthropic
    _entry(
        "claude-3-5-haiku",
        "anthropic",
        "claude-3-5-haiku-latest",
        context_window=200_000,
        max_output_tokens=8192,
        prices=("0.80", "4.00", "0.08"),
        fallbacks=("gpt-4o-mini", "gemini-2.0-flash"),
    ),
    _entry(
        "claude-3-5-sonnet",
        "anthropic",
        "claude-3-5-sonnet-latest",
        context_window=200_000,
        max_output_tokens=8192,
        prices=("3.00", "15.00", "0.30"),
        vision=True,
        tier="large",
        fallbacks=("claude-sonnet-4", "gpt-4o"),
    ),
    _entry(
        "claude-sonnet-4",
        "anthropic",
        "claude-sonnet-4-20250514",
        context_window=200_000,
        max_output_tokens=64_000,
        prices=("3.00", "15.00", "0.30"),
        vision=True,
        tier="large",
        fallbacks=("gpt-4.1", "gemini-2.5-pro"),
    ),
    _entry(
        "claude-opus-4",
        "anthropic",
        "claude-opus-4-20250514",
        context_window=200_000,
        max_output_tokens=32_000,
        prices=("15.00", "75.00", "1.50"),
        vision=True,
        tier="large",
        fallbacks=("claude-sonnet-4",),
    ),
    # Google Gemini
    _entry(
        "gemini-2.0-flash",
        "gemini",
        "gemini-2.0-flash",
        context_window=1_048_576,
        max_output_tokens=8192,
        prices=("0.10", "0.40", "0.025"),
        vision=True,
        fallbacks=("gpt-4o-mini",),
    ),
    _entry(
        "gemini-2.5-flash",
        "gemini",
        "gemini-2.5-flash",
        context_window=1_048_576,
        max_output_tokens=65_536,
        prices=("0.30", "2.50", "0.075"),
        vision=True,
        fallbacks=("gpt-4.1-mini",),
    ),
    _entry(
        "gemini-2.5-pro",
        "gemini",
        "gemini-2.5-pro",
        context_window=1_048_576,
        max_output_tokens=65_536,
        prices=("1.25", "10.00", "0.31"),
        vision=True,
        tier="large",
        fallbacks=("gpt-4.1", "claude-sonnet-4"),
    ),
    _entry(
        "gemini-embedding",
        "gemini",
        "text-embedding-004",
        context_window=2048,
        prices=("0", "0", "0"),
        tools=False,
        json=False,
        embeddings=True,
    ),
)


def catalog_sync(model_class: Any) -> tuple[int, int, int]:
    """Bring the LlmModel table in line with CATALOG; (created, updated, unlisted).

    Takes the model class so the data migration can pass its historical model."""
    created = updated = 0
    names = set()
    for entry in CATALOG:
        names.add(entry["name"])
        fields = {key: value for key, value in entry.items() if key != "name"}
        row = model_class.objects.filter(name=entry["name"]).first()
        if row is None:
            model_class.objects.create(name=entry["name"], listed=True, **fields)
            created += 1
            continue
        changed = [key for key, value in fields.items() if getattr(row, key) != value]
        if changed or not row.listed:
            for key in changed:
                setattr(row, key, fields[key])
            row.listed = True
            row.save()
            updated += 1
    unlisted = model_class.objects.exclude(name__in=names).filter(listed=True).update(listed=False)
    return created, updated, int(unlisted)
