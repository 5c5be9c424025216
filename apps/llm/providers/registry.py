"""Provider kinds by name. Built-ins register on import; a plugin is a Provider
subclass listed in settings.LLM_PROVIDER_PLUGINS (dotted paths), or registered
with @register_provider in any module that is imported."""

from __future__ import annotations

import importlib
from typing import TypeVar

from django.conf import settings

from apps.llm.providers.base import Provider, ProviderConfig

_PROVIDERS: dict[str, type[Provider]] = {}
_BUILTINS = (
    "apps.llm.providers.openai",
    "apps.llm.providers.anthropic",
    "apps.llm.providers.gemini",
    "apps.llm.providers.openai_compatible",
    "apps.llm.providers.local",
)
_loaded = False

P = TypeVar("P", bound=type[Provider])


def register_provider(cls: P) -> P:
    _PROVIDERS[cls.kind] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for module in _BUILTINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the module exists but its SDK is missing: say so
                raise
    for dotted in getattr(settings, "LLM_PROVIDER_PLUGINS", []):
        module_name, _, class_name = dotted.rpartition(".")
        register_provider(getattr(importlib.import_module(module_name), class_name))
    _loaded = True


def provider_kinds() -> list[str]:
    _load()
    return sorted(_PROVIDERS)


def provider_class(kind: str) -> type[Provider]:
    _load()
    try:
        return _PROVIDERS[kind]
    except KeyError:
        raise KeyError(f"unknown provider kind {kind!r}; known: {', '.join(sorted(_PROVIDERS))}") from None


def make_provider(config: ProviderConfig) -> Provider:
    return provider_class(config.kind)(config)
