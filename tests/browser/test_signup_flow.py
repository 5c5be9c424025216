"""A newcomer signs up, lands on their organization's subdomain, logs out and back in."""

import subprocess
from typing import Any

import pytest
from playwright.sync_api import expect

from apps.accounts.models import User
from apps.tenancy import services
from apps.tenancy.models import Organization
from tests.conftest import LiveServer, World

pytestmark = pytest.mark.browser

EMAIL = "erin@epsilon.test"
PASSWORD = "a long and unusual passphrase"


@pytest.fixture
def cleanup(live_db: World) -> Any:
    yield
    for organization in Organization.objects.filter(slug="epsilon"):
        services.organization_delete(organization=organization)
    User.objects.filter(email=EMAIL).delete()


def test_sign_up_then_log_out_and_in_again(
    page: Any, asgi_server: LiveServer, celery_worker: subprocess.Popen[bytes], cleanup: None
) -> None:
    page.goto(asgi_server.url())
    page.get_by_role("link", name="Create an organization").first.click()

    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Organization name").fill("Epsilon Labs")
    page.get_by_label("Address").fill("epsilon")
    page.get_by_role("button", name="Create organization").click()

    # The organization's own subdomain, once the worker has cloned its schema.
    expect(page.get_by_role("heading", level=1)).to_have_text("Epsilon Labs")
    assert page.url == asgi_server.url(Organization(slug="epsilon"))
    expect(page.get_by_text("Welcome to Epsilon Labs")).to_be_visible()
    expect(page.get_by_test_id("current-user")).to_have_text(EMAIL)
    expect(page.locator("#live-status.on")).to_be_visible()  # the notices socket is open

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You have been logged out.")).to_be_visible()
    assert page.url.startswith(asgi_server.url(path="/login/"))

    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Epsilon Labs")
    assert page.url == asgi_server.url(Organization(slug="epsilon"))


def test_a_bad_address_is_explained_on_the_form(page: Any, asgi_server: LiveServer) -> None:
    page.goto(asgi_server.url(path="/signup/"))
    page.get_by_label("Email").fill("someone@new.test")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Organization name").fill("Admins")
    page.get_by_label("Address").fill("admin")
    page.get_by_role("button", name="Create organization").click()
    expect(page.get_by_role("alert")).to_contain_text("is reserved")
    assert not Organization.objects.filter(name="Admins").exists()


def test_an_outsider_sees_no_access_on_another_organization(
    page: Any, asgi_server: LiveServer, world: World
) -> None:
    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(world.ben.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Beta")

    page.goto(asgi_server.url(world.alpha))
    expect(page.get_by_role("heading", level=1)).to_have_text("No access")
