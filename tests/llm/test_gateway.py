"""The gateway's contract: which model serves, refusals with a reason, and the route."""

import pytest
from asgiref.sync import async_to_sync

from apps.llm import services
from apps.llm.errors import MissingCredentials, ModelDisabled, UnknownModel
from apps.llm.gateway import gateway
from apps.llm.models import LlmModel
from apps.llm.types import CallContext, ChatRequest, Message
from apps.tenancy.audit import Actor

pytestmark = pytest.mark.django_db


def ask(model: str, text: str = "Hello") -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(role="user", content=text),))


def chat(request: ChatRequest, context: CallContext):
    return async_to_sync(gateway().chat)(request, context=context)


def test_the_catalog_is_loaded_by_the_migration_and_the_local_model_is_there(world):
    names = set(LlmModel.objects.values_list("name", flat=True))
    assert {"smollm2-135m", "gpt-4o-mini", "claude-3-5-haiku", "gemini-2.0-flash"} <= names
    local = LlmModel.objects.get(name="smollm2-135m")
    assert local.provider == "local"
    assert local.enabled_by_default


def test_an_unknown_model_is_refused_naming_it(world):
    with pytest.raises(UnknownModel) as caught:
        chat(ask("gpt-17"), CallContext(organization_id=world.alpha.pk))
    assert "'gpt-17'" in caught.value.message
    assert caught.value.status == 400


def test_a_model_disabled_for_the_organization_is_refused_for_it_only(world, settings):
    settings.OPENAI_API_KEY = ""
    services.model_access_set(
        organization=world.alpha, model_name="smollm2-135m", enabled=False, actor=Actor(user=world.alice)
    )
    with pytest.raises(ModelDisabled) as caught:
        chat(ask("local"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 403
    assert "disabled" in caught.value.message
    models = {row["name"]: row for row in async_to_sync(gateway().models)(organization_id=world.beta.pk)}
    assert models["smollm2-135m"]["enabled"] is True


def test_missing_credentials_are_refused_before_anything_is_sent(world, settings):
    settings.OPENAI_API_KEY = ""
    with pytest.raises(MissingCredentials) as caught:
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 403
    assert "openai" in caught.value.message
