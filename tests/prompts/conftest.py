"""Helpers for the prompt template tests: templates made through the real services in
an organization's schema, and API clients with Alpha's and Beta's keys."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from apps.prompts import services
from apps.prompts.models import PromptTemplate
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from tests.api.conftest import key_client, new_key, throttle_reset
from tests.conftest import World


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    throttle_reset()
    yield
    throttle_reset()


@contextmanager
def in_schema(organization: Organization) -> Iterator[None]:
    with schema_context(organization.schema_name):
        yield


def make_template(world: World, organization: Organization | None = None, **kwargs: Any) -> PromptTemplate:
    organization = organization or world.alpha
    owner = world.alice if organization == world.alpha else world.bob
    kwargs.setdefault("name", "greeting")
    kwargs.setdefault("body", "Hello {{ who }}!")
    kwargs.setdefault("variables", [{"name": "who", "type": "string"}])
    with in_schema(organization):
        return services.template_create(actor=Actor(user=owner), organization=organization, **kwargs)


@pytest.fixture
def alpha_api(world: World) -> Client:
    _, raw = new_key(world, ["admin"], name="prompts admin")
    return key_client(raw)


@pytest.fixture
def beta_api(world: World) -> Client:
    _, raw = new_key(world, ["admin"], organization=world.beta, name="beta admin")
    return key_client(raw)
