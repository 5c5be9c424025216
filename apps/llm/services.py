"""Writes to the gateway's tables, audited. Each drops this process's snapshot of
what it changed (apps/llm/selectors.py) at once and again on commit, so the next
call in this process sees the change."""

from __future__ import annotations

import ipaddress
import socket
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction

from apps.core.errors import Invalid, NotFound
from apps.llm import selectors
from apps.llm.catalog import ALIASES, catalog_sync
from apps.llm.credentials import (
    BASE_URL_REQUIRED,
    COMPATIBLE_OPTIONS,
    KEYLESS_PROVIDERS,
    OPTION_PROVIDERS,
    api_key_encrypt,
    api_key_hint,
)
from apps.llm.models import Budget, LlmModel, ModelAccess, ProviderCredential, RoutingPolicy
from apps.llm.providers.openai_compatible import resolve_options
from apps.llm.providers.registry import provider_kinds
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization


def _forget(organization_id: int | None = None) -> None:
    selectors.snapshots_clear(organization_id=organization_id)
    transaction.on_commit(lambda: selectors.snapshots_clear(organization_id=organization_id))


@transaction.atomic
def catalog_refresh() -> tuple[int, int, int]:
    """Sync apps/llm/catalog.py into LlmModel: (added, updated, no longer listed)."""
    result = catalog_sync(LlmModel)
    _forget()
    return result


def _catalog_model(name: str) -> LlmModel:
    model = LlmModel.objects.filter(name=ALIASES.get(name, name), listed=True).first()
    if model is None:
        raise NotFound(f"There is no model {name!r} in the catalog.", code="unknown_model")
    return model


@transaction.atomic
def model_access_set(
    *, organization: Organization, model_name: str, enabled: bool, actor: Actor
) -> ModelAccess:
    """Turn a catalog model on or off for one organization."""
    model = _catalog_model(model_name)
    access, _ = ModelAccess.objects.update_or_create(
        organization=organization, model=model, defaults={"enabled": enabled}
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="llm.model_enabled" if enabled else "llm.model_disabled",
        target=access,
        after={"model": model.name, "enabled": enabled},
    )
    _forget(organization.pk)
    return access


def _check_base_url(base_url: str) -> str:
    base_url = base_url.strip()
    if not base_url:
        return ""
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise Invalid("The base URL must be an http:// or https:// address.", field="base_url")
    if len(base_url) > 500:
        raise Invalid("The base URL is too long (500 characters at most).", field="base_url")
    if getattr(settings, "LLM_BLOCK_PRIVATE_BASE_URLS", False) and _private_host(parts.hostname or ""):
        raise Invalid(
            "The base URL leads to a private or local network address, which this platform does not allow.",
            field="base_url",
        )
    return base_url


def _private_host(host: str) -> bool:
    """Does the host name or address lead to loopback, private, link-local or reserved space?"""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # unresolvable now: the call will fail on its own, with the provider's error
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_reserved
            or address.is_multicast
            or address.is_unspecified
        ):
            return True
    return False


def credential_options(provider: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options worth storing (unset ones dropped), or Invalid naming the bad one."""
    given = {name: value for name, value in options.items() if value not in (None, "")}
    if not given:
        return {}
    if provider not in OPTION_PROVIDERS:
        raise Invalid(
            f"Only {', '.join(sorted(OPTION_PROVIDERS))} takes options; {provider} has none.", field="options"
        )
    unknown = sorted(set(given) - set(COMPATIBLE_OPTIONS))
    if unknown:
        raise Invalid(
            f"Unknown option {unknown[0]!r}; known: {', '.join(COMPATIBLE_OPTIONS)}.", field="options"
        )
    for name in ("stream_usage", "embeddings"):
        if name in given and not isinstance(given[name], bool):
            raise Invalid(f"Option {name} must be true or false.", field="options")
    try:
        resolve_options(given)
    except ValueError as exc:
        raise Invalid(f"{str(exc)[0].upper()}{str(exc)[1:]}.", field="options") from None
    return given


@transaction.atomic
def credential_set(
    *,
    organization: Organization,
    provider: str,
    api_key: str,
    base_url: str = "",
    options: dict[str, Any] | None = None,
    actor: Actor,
) -> ProviderCredential:
    """The organization's own key (and base URL) for a provider kind; replaces any earlier one.
    `options`: for openai_compatible only, how the server differs from OpenAI's API
    (server preset, tools, json, stream_usage, embeddings; see credential_options)."""
    if provider not in provider_kinds():
        raise Invalid(
            f"Unknown provider {provider!r}; known: {', '.join(provider_kinds())}.", field="provider"
        )
    if provider in KEYLESS_PROVIDERS:
        raise Invalid(f"The {provider} provider needs no credentials.", field="provider")
    api_key = api_key.strip()
    base_url = _check_base_url(base_url)
    if not api_key and provider not in BASE_URL_REQUIRED:
        raise Invalid("Enter the API key.", field="api_key")
    if provider in BASE_URL_REQUIRED and not base_url:
        raise Invalid(f"The {provider} provider needs a base URL.", field="base_url")
    if len(api_key) > 1000:
        raise Invalid("The API key is too long.", field="api_key")
    options = credential_options(provider, options or {})
    credential, _ = ProviderCredential.objects.update_or_create(
        organization=organization,
        provider=provider,
        defaults={
            "api_key_encrypted": api_key_encrypt(api_key),
            "api_key_hint": api_key_hint(api_key),
            "base_url": base_url,
            "options": options,
        },
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="llm.credential_set",
        target=credential,
        after={
            "provider": provider,
            "base_url": base_url,
            "key": credential.api_key_hint or "(none)",
            **({"options": options} if options else {}),
        },
    )
    _forget(organization.pk)
    return credential


@transaction.atomic
def credential_delete(*, organization: Organization, provider: str, actor: Actor) -> None:
    credential = ProviderCredential.objects.filter(organization=organization, provider=provider).first()
    if credential is None:
        raise NotFound(f"The organization has no {provider} credentials.")
    audit_record(
        actor=actor,
        organization=organization,
        action="llm.credential_deleted",
        target=credential,
        before={"provider": provider},
    )
    credential.delete()
    _forget(organization.pk)


def _price(value: str | Decimal | None, field: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise Invalid("Give the price as a number of US dollars.", field=field) from None
    if not price.is_finite() or price < 0 or price > Decimal(1_000_000):
        raise Invalid("The price must be between 0 and 1,000,000 US dollars.", field=field)
    return price


@transaction.atomic
def routing_policy_set(
    *,
    organization: Organization,
    preferred_models: list[str] | None = None,
    max_output_price: str | Decimal | None = None,
    fallbacks: dict[str, list[str]] | None = None,
    actor: Actor,
) -> RoutingPolicy:
    """The organization's routing policy: preferred models (best first), a price ceiling
    (output USD per million tokens) and fallback chains replacing the catalog's."""
    known = set(LlmModel.objects.filter(listed=True).values_list("name", flat=True)) | set(ALIASES)
    preferred = [str(name) for name in preferred_models or []]
    chains = {str(key): [str(name) for name in value] for key, value in (fallbacks or {}).items()}
    for name in [*preferred, *chains, *(name for chain in chains.values() for name in chain)]:
        if name not in known:
            raise Invalid(f"There is no model {name!r} in the catalog.", field="models")
    policy, _ = RoutingPolicy.objects.update_or_create(
        organization=organization,
        defaults={
            "preferred_models": preferred,
            "max_output_price": _price(max_output_price, "max_output_price"),
            "fallbacks": chains,
        },
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="llm.routing_policy_set",
        target=policy,
        after={
            "preferred_models": preferred,
            "max_output_price": str(policy.max_output_price) if policy.max_output_price is not None else None,
            "fallbacks": chains,
        },
    )
    _forget(organization.pk)
    return policy


@transaction.atomic
def budget_set(
    *,
    organization: Organization,
    scope: str,
    limit_usd: str | Decimal,
    period: str = Budget.Period.MONTH,
    api_key_id: int = 0,
    run_id: str = "",
    actor: Actor,
) -> Budget:
    """A spending limit for the organization, one of its API keys, or one agent run."""
    if scope not in Budget.Scope.values:
        raise Invalid(f"The scope must be one of {', '.join(Budget.Scope.values)}.", field="scope")
    if period not in Budget.Period.values:
        raise Invalid(f"The period must be one of {', '.join(Budget.Period.values)}.", field="period")
    limit = _price(limit_usd, "limit_usd")
    if limit is None:
        raise Invalid("Give the budget in US dollars.", field="limit_usd")
    if scope == Budget.Scope.API_KEY:
        if not organization.api_keys.filter(pk=api_key_id).exists():
            raise Invalid("The organization has no such API key.", field="api_key_id")
        run_id = ""
    elif scope == Budget.Scope.RUN:
        run_id = run_id.strip()
        if not run_id or len(run_id) > 64:
            raise Invalid("Name the run (64 characters at most).", field="run_id")
        api_key_id = 0
    else:
        api_key_id, run_id = 0, ""
    budget, _ = Budget.objects.update_or_create(
        organization=organization,
        scope=scope,
        api_key_id=api_key_id,
        run_id=run_id,
        period=period,
        defaults={"limit_usd": limit},
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="llm.budget_set",
        target=budget,
        after={
            "scope": scope,
            "period": period,
            "limit_usd": str(limit),
            "api_key_id": api_key_id,
            "run_id": run_id,
        },
    )
    _forget(organization.pk)
    return budget


@transaction.atomic
def budget_delete(*, organization: Organization, budget_id: int, actor: Actor) -> None:
    budget = Budget.objects.filter(organization=organization, pk=budget_id).first()
    if budget is None:
        raise NotFound("The organization has no such budget.")
    audit_record(actor=actor, organization=organization, action="llm.budget_deleted", target=budget)
    budget.delete()
    _forget(organization.pk)
