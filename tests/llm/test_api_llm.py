"""/api/v1/llm/: the models an organization may call, its own provider credentials
(never shown back), and its usage by day, model and person."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from apps.llm import selectors
from apps.llm.credentials import api_key_decrypt
from apps.llm.models import ModelAccess, ProviderCredential, UsageDaily
from tests.api.conftest import key_client, new_key
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db
API = "/api/v1/llm"


@pytest.fixture(autouse=True)
def _fresh_snapshots() -> Iterator[None]:
    # The gateway keeps per-process snapshots of organizations' settings; these tests roll back.
    selectors.snapshots_clear()
    yield
    selectors.snapshots_clear()


def send(client: Client, method: str, path: str, body: Any) -> Any:
    return getattr(client, method)(f"{API}{path}", json.dumps(body), content_type="application/json")


def models_of(client: Client) -> dict[str, dict[str, Any]]:
    response = client.get(f"{API}/models")
    assert response.status_code == 200, response.content
    return {entry["name"]: entry for entry in response.json()}


@override_settings(OPENAI_API_KEY="", ANTHROPIC_API_KEY="", GEMINI_API_KEY="")
def test_every_member_sees_the_catalog_with_what_is_enabled(world: World) -> None:
    models = models_of(client_for(world.amy, world.alpha))
    local = models["smollm2-135m"]
    assert local["enabled"] is True
    assert local["key_source"] == "none"  # the local model needs no key
    assert local["provider"] == "local"
    assert local["context_window"] > 0
    assert set(local["capabilities"]) == {"tools", "vision", "json", "embeddings"}
    assert models["gpt-4o-mini"]["key_source"] == "missing"  # no platform key, none of Alpha's
    assert "provider_model" not in local


def test_managers_switch_models_for_their_organization_only(world: World) -> None:
    owner = client_for(world.alice, world.alpha)
    response = send(owner, "patch", "/models", {"models": {"gpt-4o": False, "smollm2-135m": True}})
    assert response.status_code == 200, response.content
    assert {e["name"]: e["enabled"] for e in response.json()}["gpt-4o"] is False
    assert models_of(owner)["gpt-4o"]["enabled"] is False
    assert models_of(client_for(world.bob, world.beta))["gpt-4o"]["enabled"] is True
    assert ModelAccess.objects.filter(organization=world.beta).count() == 0
    # Members may look, not switch; unknown names are refused whole.
    member = send(client_for(world.amy, world.alpha), "patch", "/models", {"models": {"gpt-4o": True}})
    assert member.status_code == 403
    assert member.json()["error"]["code"] == "role_forbidden"
    unknown = send(owner, "patch", "/models", {"models": {"gpt-4o": True, "gpt-99": True}})
    assert unknown.status_code == 400
    assert "gpt-99" in unknown.json()["error"]["message"]
    assert models_of(owner)["gpt-4o"]["enabled"] is False
    assert send(owner, "patch", "/models", {"models": {"gpt-4o": "maybe"}}).status_code == 400
    assert send(owner, "patch", "/models", {"models": {}}).status_code == 400
    assert send(owner, "patch", "/models", {"enabled": True}).status_code == 400


@override_settings(OPENAI_API_KEY="", ANTHROPIC_API_KEY="", GEMINI_API_KEY="")
def test_credentials_are_set_encrypted_and_never_shown_back(world: World) -> None:
    owner = client_for(world.alice, world.alpha)
    secret = "sk-alpha-very-secret-1234"
    response = send(owner, "post", "/credentials", {"provider": "openai", "api_key": secret})
    assert response.status_code == 200, response.content
    assert secret not in response.content.decode()
    listed = {row["provider"]: row for row in owner.get(f"{API}/credentials").json()}
    assert listed["openai"]["key_source"] == "organization"
    hint = listed["openai"]["api_key_hint"]
    assert hint
    assert secret.endswith(hint.lstrip("…"))
    assert listed["anthropic"]["key_source"] == "missing"
    assert listed["local"]["key_source"] == "none"
    stored = ProviderCredential.objects.get(organization=world.alpha, provider="openai")
    assert secret not in stored.api_key_encrypted
    assert api_key_decrypt(stored.api_key_encrypted) == secret
    assert models_of(owner)["gpt-4o-mini"]["key_source"] == "organization"
    # Beta is untouched by Alpha's key.
    assert models_of(client_for(world.bob, world.beta))["gpt-4o-mini"]["key_source"] == "missing"
    deleted = owner.delete(f"{API}/credentials?provider=openai")
    assert deleted.status_code == 200
    assert {row["provider"]: row for row in deleted.json()}["openai"]["key_source"] == "missing"
    assert owner.delete(f"{API}/credentials?provider=openai").status_code == 404
    assert owner.delete(f"{API}/credentials").status_code == 400


@override_settings(OPENAI_API_KEY="sk-platform")
def test_without_its_own_key_an_organization_uses_the_platform_default(world: World) -> None:
    owner = client_for(world.alice, world.alpha)
    listed = {row["provider"]: row for row in owner.get(f"{API}/credentials").json()}
    assert listed["openai"]["key_source"] == "platform"
    assert listed["openai"]["api_key_hint"] == ""  # the platform's key is not the organization's to see


def test_bad_credentials_are_400_on_the_field(world: World) -> None:
    owner = client_for(world.alice, world.alpha)
    cases = [
        ({"provider": "openai", "api_key": ""}, "api_key"),
        ({"provider": "no-such", "api_key": "x"}, "provider"),
        ({"provider": "openai", "api_key": "x", "base_url": "ftp://x"}, "base_url"),
        ({"provider": "openai", "api_key": "x", "colour": "red"}, "colour"),
        ({"provider": "local", "api_key": "x"}, "provider"),
    ]
    for body, field in cases:
        response = send(owner, "post", "/credentials", body)
        assert response.status_code == 400, body
        assert field in response.json()["error"]["fields"], (body, response.json())
    assert not ProviderCredential.objects.filter(organization=world.alpha).exists()


def test_only_managers_and_the_right_scopes_touch_settings(world: World) -> None:
    member = client_for(world.amy, world.alpha)
    assert member.get(f"{API}/credentials").status_code == 403
    assert send(member, "post", "/credentials", {"provider": "openai", "api_key": "x"}).status_code == 403
    assert member.get(f"{API}/usage").status_code == 403
    _, reader = new_key(world, ["llm:read"])
    assert key_client(reader).get(f"{API}/models").status_code == 200
    refused = key_client(reader).get(f"{API}/credentials")
    assert refused.status_code == 403
    assert "llm_settings:read" in refused.json()["error"]["message"]
    _, manager = new_key(world, ["llm_settings:write"])
    set_by_key = send(
        key_client(manager), "post", "/credentials", {"provider": "anthropic", "api_key": "sk-ant-1"}
    )
    assert set_by_key.status_code == 200
    assert key_client(manager).get(f"{API}/usage").status_code == 200


def _usage(world: World, **fields: Any) -> UsageDaily:
    defaults: dict[str, Any] = {
        "organization": world.alpha,
        "day": timezone.now().date(),
        "model": "gpt-4o-mini",
        "provider": "openai",
        "requests": 1,
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": Decimal("0.001"),
    }
    return UsageDaily.objects.create(**{**defaults, **fields})


def test_usage_by_day_model_and_person_is_the_organizations_own(world: World) -> None:
    today = timezone.now().date()
    _usage(world, user_id=world.alice.pk, requests=3, cost_usd=Decimal("0.30"))
    _usage(
        world, user_id=world.amy.pk, model="claude-3-5-haiku", provider="anthropic", cost_usd=Decimal("0.05")
    )
    _usage(world, day=today - timedelta(days=2), user_id=world.alice.pk, cost_usd=Decimal("0.10"), failures=2)
    _usage(world, day=today - timedelta(days=90), user_id=world.alice.pk, cost_usd=Decimal("9"))
    _usage(world, organization=world.beta, user_id=world.bob.pk, requests=50, cost_usd=Decimal("7"))
    response = client_for(world.alice, world.alpha).get(f"{API}/usage?days=30")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["total"]["requests"] == 5
    assert Decimal(body["total"]["cost_usd"]) == Decimal("0.45")
    assert body["total"]["failures"] == 2
    assert [row["day"] for row in body["by_day"]] == [str(today - timedelta(days=2)), str(today)]
    assert [row["model"] for row in body["by_model"]] == ["gpt-4o-mini", "claude-3-5-haiku"]
    people = {row["email"]: Decimal(row["cost_usd"]) for row in body["by_user"]}
    assert people == {"alice@alpha.test": Decimal("0.40"), "amy@alpha.test": Decimal("0.05")}
    assert "bob@beta.test" not in response.content.decode()
    longer = client_for(world.alice, world.alpha).get(f"{API}/usage?days=120").json()
    assert Decimal(longer["total"]["cost_usd"]) == Decimal("9.45")
    assert client_for(world.alice, world.alpha).get(f"{API}/usage?days=0").status_code == 400
    assert client_for(world.alice, world.alpha).get(f"{API}/usage?days=x").status_code == 400
