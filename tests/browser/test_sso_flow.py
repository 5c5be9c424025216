"""In Chromium: log in with an organization's SSO at the loopback fake provider
and land on the organization's dashboard, on its own subdomain, as a new member."""

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from apps.accounts.models import User
from apps.tenancy.models import Membership, OrganizationSSO
from tests.accounts.sso_helpers import configure_sso, fake_provider
from tests.conftest import LiveServer, World
from tests.fakes.oidc_provider import FakeIdentityProvider, FakeUser

pytestmark = pytest.mark.browser

EMAIL = "sienna@alpha.test"


@pytest.fixture
def alpha_with_sso(live_db: World, settings: Any) -> Iterator[FakeIdentityProvider]:
    with fake_provider(settings) as provider:
        configure_sso(live_db.alpha, provider, domain="alpha.test")
        try:
            yield provider
        finally:
            OrganizationSSO.objects.filter(organization=live_db.alpha).delete()
            User.objects.filter(email=EMAIL).delete()


def test_log_in_with_sso_and_land_on_the_organization(
    page: Any, asgi_server: LiveServer, world: World, alpha_with_sso: FakeIdentityProvider
) -> None:
    alpha_with_sso.next_user = FakeUser(sub="okta-sienna", email=EMAIL, name="Sienna")
    page.goto(asgi_server.url(path="/sso/alpha/login/"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Log in to Alpha")
    page.get_by_role("button", name="Log in with SSO").click()

    # Out to the provider and back, then the handoff to Alpha's own host.
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")
    assert page.url == asgi_server.url(world.alpha)
    expect(page.get_by_test_id("current-user")).to_have_text(EMAIL)
    expect(page.get_by_text("You are member of this organization.")).to_be_visible()
    assert Membership.objects.get(user__email=EMAIL, organization=world.alpha).role == Membership.Role.MEMBER


def test_a_forged_callback_shows_an_error_page(
    page: Any, asgi_server: LiveServer, alpha_with_sso: FakeIdentityProvider
) -> None:
    page.goto(asgi_server.url(path="/sso/auth/complete/oidc/?code=stolen&state=forged"))
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "This login does not match the one your browser started"
    )
    assert not User.objects.filter(email=EMAIL).exists()
