"""An organization's OIDC settings cannot send the server into its own network (production rules)."""

from typing import Any

import pytest
from django.test import override_settings

from apps.accounts.outbound import outbound_url_problem
from apps.accounts.sso import sso_settings_save
from apps.core.errors import Invalid
from apps.tenancy.audit import Actor
from apps.tenancy.models import OrganizationSSO
from tests.accounts.sso_helpers import configure_sso, fake_provider
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db


@override_settings(SSO_ALLOW_PRIVATE_ISSUERS=False)
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://login.example.com", "Use an https:// address."),
        ("https://127.0.0.1:5432", "private or local address"),
        ("https://169.254.169.254/latest/meta-data", "private or local address"),
        ("https://[::1]/", "private or local address"),
        ("https://10.1.2.3/", "private or local address"),
        ("https://localhost/", "private or local address"),
    ],
)
def test_private_and_plain_http_issuers_are_refused_in_production(url: str, problem: str) -> None:
    found = outbound_url_problem(url)
    assert found is not None
    assert problem in found


@override_settings(SSO_ALLOW_PRIVATE_ISSUERS=False)
def test_saving_such_an_issuer_is_a_field_error_and_saves_nothing(world: World) -> None:
    with pytest.raises(Invalid) as refused:
        sso_settings_save(
            actor=Actor(user=world.alice), organization=world.alpha, issuer="https://127.0.0.1:6379",
            client_id="x", client_secret="y", verified_domain="", sso_required=False, enabled=True,
        )  # fmt: skip
    assert refused.value.field == "issuer"
    assert not OrganizationSSO.objects.filter(organization=world.alpha).exists()


def test_a_login_whose_provider_became_internal_is_refused_before_any_fetch(
    world: World, settings: Any
) -> None:
    with fake_provider(settings) as provider:
        configure_sso(world.alpha, provider, domain="alpha.test")  # saved while allowed (development)
        settings.SSO_ALLOW_PRIVATE_ISSUERS = False
        response = client_for(None).post("/sso/alpha/login/")
        assert response.status_code >= 400
        assert response.status_code < 500
        assert provider.token_requests == 0
