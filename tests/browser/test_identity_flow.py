"""An owner invites someone, who signs up from the link in a second browser; then
the owner creates and revokes an API key and finds all of it in the audit log."""

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import mail
from playwright.sync_api import expect

from apps.accounts.models import User
from apps.tenancy.models import ApiKey, Invitation
from tests.conftest import ARTIFACTS, LiveServer, World, wait_for

pytestmark = pytest.mark.browser

PASSWORD = "a long and unusual passphrase"
SCREENSHOTS = ARTIFACTS / "screenshots"
KEY_NAME = "Browser test key"


@pytest.fixture
def invitee_email(live_db: World) -> Iterator[str]:
    email = f"nina-{uuid.uuid4().hex[:8]}@invited.test"
    yield email
    # Audit events are append-only and stay; everything else this test made goes.
    User.objects.filter(email=email).delete()  # and with it the membership
    Invitation.objects.filter(organization=live_db.alpha, email=email).delete()
    ApiKey.objects.filter(organization=live_db.alpha, name=KEY_NAME).delete()


def _invitation_link(email: str) -> str:
    def sent() -> str | None:
        for message in mail.outbox:
            if email in message.to:
                found = re.search(r"https?://\S+/invitations/\S+/", str(message.body))
                return found.group(0) if found else None
        return None

    link: str = wait_for(sent)
    return link


def test_invite_accept_create_and_revoke_a_key_then_read_the_audit_log(
    page: Any, browser: Any, asgi_server: LiveServer, world: World, invitee_email: str
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before revoking

    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(world.alice.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")

    # Invite.
    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Members").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Members")
    page.get_by_label("Email", exact=True).fill(invitee_email)
    page.get_by_label("Role", exact=True).select_option("member")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_text(f"Invitation sent to {invitee_email} as member.")).to_be_visible()
    expect(page.get_by_test_id("invitation-row").filter(has_text=invitee_email)).to_be_visible()
    link = _invitation_link(invitee_email)
    expect(page.get_by_role("textbox", name="Invitation link")).to_have_value(link)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "identity_members_after_invite.png"), full_page=True)

    # Accept in a second browser, as a newcomer.
    newcomer = browser.new_context(viewport={"width": 390, "height": 844})  # a phone, for the layout
    try:
        other = newcomer.new_page()
        other.set_default_timeout(15_000)
        other.goto(link)
        expect(other.get_by_role("heading", level=1)).to_have_text("Join Alpha")
        expect(other.get_by_text("Alice (alice@alpha.test) invited")).to_be_visible()
        other.screenshot(path=str(SCREENSHOTS / "identity_invitation_phone.png"), full_page=True)
        other.get_by_label("Your name").fill("Nina")
        other.get_by_label("Choose a password").fill(PASSWORD)
        other.get_by_role("button", name="Sign up and join").click()
        expect(other.get_by_role("heading", level=1)).to_have_text("Alpha")
        assert other.url == asgi_server.url(world.alpha)
        expect(other.get_by_test_id("current-user")).to_have_text(invitee_email)
        expect(other.get_by_text("You are member of this organization.")).to_be_visible()
    finally:
        newcomer.close()

    page.reload()
    expect(page.get_by_test_id("member-row").filter(has_text=invitee_email)).to_be_visible()

    # Create an API key: its secret is shown this once, with a copy button.
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill(KEY_NAME)
    page.get_by_label("members:read").check()
    page.get_by_role("button", name="Create key").click()
    secret_field = page.get_by_role("textbox", name="Secret key")
    expect(secret_field).to_have_value(re.compile(r"^ayk_[0-9a-f]+_\S+$"))
    page.get_by_role("button", name="Copy secret key").click()
    expect(page.locator("#api-key-secret-status")).to_have_text("Copied to the clipboard.")
    secret = secret_field.input_value()
    page.screenshot(path=str(SCREENSHOTS / "identity_api_key_secret.png"), full_page=True)
    assert page.evaluate("navigator.clipboard.readText()") == secret

    page.get_by_role("link", name="API keys").click()
    expect(page.get_by_role("textbox", name="Secret key")).to_have_count(0)
    assert secret not in page.content()

    # Revoke it.
    row = page.get_by_test_id("key-row").filter(has_text=KEY_NAME)
    row.get_by_role("button", name=f"Revoke key {KEY_NAME}").click()
    expect(page.get_by_text(re.compile(rf"The key {KEY_NAME} \(\w+…\) was revoked"))).to_be_visible()
    expect(row.get_by_text("revoked", exact=True)).to_be_visible()

    # All four in the audit log.
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit log")
    for action in ["invitation.created", "invitation.accepted", "api_key.created", "api_key.revoked"]:
        expect(page.locator(f'[data-testid="audit-row"][data-action="{action}"]').first).to_be_visible()
    expect(page.get_by_role("link", name="Export CSV")).to_be_visible()
