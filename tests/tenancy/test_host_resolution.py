import pytest

from apps.tenancy.models import Organization
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db


def test_the_bare_domain_serves_the_landing_page() -> None:
    response = client_for(None).get("/")
    assert response.status_code == 200
    assert b"Create an organization" in response.content


def test_an_unknown_subdomain_gets_a_clean_404_page(world: World) -> None:
    response = client_for(None).get("/", HTTP_HOST="nobody-here.localhost")
    assert response.status_code == 404
    assert b"No organization lives at" in response.content


def test_an_organization_host_serves_its_dashboard_to_members(world: World) -> None:
    response = client_for(world.amy, world.alpha).get("/")
    assert response.status_code == 200
    assert b"<h1>Alpha</h1>" in response.content
    assert b"Welcome to Alpha" in response.content  # the notice written in alpha's schema


def test_each_organization_sees_only_its_own_schema(world: World) -> None:
    from django_tenants.utils import schema_context

    from apps.notices.models import Notice

    with schema_context(world.alpha.schema_name):
        Notice.objects.create(title="Only for alpha")
    alpha_page = client_for(world.alice, world.alpha).get("/")
    beta_page = client_for(world.bob, world.beta).get("/")
    assert b"Only for alpha" in alpha_page.content
    assert b"Only for alpha" not in beta_page.content


def test_an_organization_being_set_up_says_so(world: World) -> None:
    Organization.objects.filter(pk=world.alpha.pk).update(status=Organization.Status.PROVISIONING)
    response = client_for(world.alice, world.alpha).get("/")
    assert response.status_code == 503
    assert b"Setting up Alpha" in response.content


def test_a_suspended_organization_is_closed_to_its_members(world: World) -> None:
    Organization.objects.filter(pk=world.alpha.pk).update(status=Organization.Status.SUSPENDED)
    response = client_for(world.alice, world.alpha).get("/")
    assert response.status_code == 403
    assert b"suspended" in response.content


def test_a_host_outside_the_platform_is_refused_without_a_500() -> None:
    from django.test import Client

    response = Client(raise_request_exception=False).get("/", HTTP_HOST="evil.example.com")
    assert response.status_code == 400
    assert b"Bad request" in response.content
