"""The gateway's tables in the back office: listed for staff, keys never shown, and a
catalog change reaches the gateway at once."""

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from apps.accounts.models import User
from apps.llm import services
from apps.llm.gateway import gateway
from apps.llm.models import LlmModel
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from tests.conftest import World, client_for
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture
def back_office() -> Client:
    staff = User.objects.create_user("sam@agentyard.test", PASSWORD, is_staff=True, is_superuser=True)
    return client_for(staff)


def test_staff_can_open_every_gateway_list(world: World, back_office: Client) -> None:
    services.credential_set(
        organization=world.alpha,
        provider="openai",
        api_key="sk-secret-value-9876",
        actor=Actor(user=world.alice),
    )
    for path in [
        "/admin/llm/llmmodel/",
        "/admin/llm/modelaccess/",
        "/admin/llm/providercredential/",
        "/admin/llm/routingpolicy/",
        "/admin/llm/budget/",
        "/admin/llm/usagedaily/",
    ]:
        response = back_office.get(path)
        assert response.status_code == 200, path
        assert "sk-secret-value" not in response.content.decode()


def test_a_catalog_change_in_the_back_office_is_audited_and_seen_by_the_gateway(
    world: World, back_office: Client
) -> None:
    before = {m["name"]: m for m in async_to_sync(gateway().models)(organization_id=world.alpha.pk)}
    assert before["gpt-4o"]["enabled"] is True
    model = LlmModel.objects.get(name="gpt-4o")
    url = f"/admin/llm/llmmodel/{model.pk}/change/"
    form = {
        "name": model.name,
        "provider": model.provider,
        "provider_model": model.provider_model,
        "description": model.description,
        "context_window": model.context_window,
        "max_output_tokens": model.max_output_tokens,
        "supports_tools": "on",
        "supports_vision": "on",
        "supports_json": "on",
        "input_price": "2.5",
        "output_price": "10",
        "cached_input_price": "1.25",
        "tier": model.tier,
        "fallbacks": "[]",
        "listed": "on",
        # enabled_by_default left out: off
    }
    response = back_office.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    after = {m["name"]: m for m in async_to_sync(gateway().models)(organization_id=world.alpha.pk)}
    assert after["gpt-4o"]["enabled"] is False
    assert AuditEvent.objects.filter(action="admin.change", target_id=str(model.pk)).exists()
