from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client

from tests.conftest import World, client_for
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def _login(next_url: str = "", email: str = "amy@alpha.test", password: str = PASSWORD) -> tuple[int, str]:
    response = client_for(None).post("/login/", {"username": email, "password": password, "next": next_url})
    return response.status_code, response.headers.get("Location", "")


def _landing(location: str) -> tuple[str, Client]:
    """Follow a handoff link as the browser would; return the final host+path and the client."""
    parts = urlsplit(location)
    client = Client(HTTP_HOST=parts.netloc)
    response = client.get(parts.path, parse_qs(parts.query))
    assert response.status_code == 302, response.content
    return f"{parts.netloc}{response['Location']}", client


def test_logging_in_with_one_organization_goes_straight_to_its_dashboard(world: World) -> None:
    status, location = _login()
    assert status == 302
    assert location.startswith("http://alpha.localhost/auth/handoff/?token=")
    landed, client = _landing(location)
    assert landed == "alpha.localhost/"
    assert client.get("/").status_code == 200  # logged in on the organization's own host


def test_logging_in_returns_to_the_organization_page_that_asked(world: World) -> None:
    location = _login("http://alpha.localhost/?tab=notices")[1]
    assert _landing(location)[0] == "alpha.localhost/?tab=notices"


def test_a_next_url_off_the_platform_is_ignored(world: World) -> None:
    for evil in ["https://evil.example.com/", "//evil.example.com/", "javascript:alert(1)"]:
        location = _login(evil)[1]
        assert location.startswith("http://alpha.localhost/auth/handoff/"), evil


def test_the_email_is_case_insensitive(world: World) -> None:
    assert _login(email="AMY@Alpha.Test")[0] == 302


def test_a_wrong_password_is_refused_with_a_message(world: World) -> None:
    response = client_for(None).post("/login/", {"username": "amy@alpha.test", "password": "nope"})
    assert response.status_code == 200
    assert b"enter a correct email and password" in response.content


def test_a_person_in_several_organizations_lands_on_the_picker(world: World) -> None:
    from apps.tenancy.models import Membership

    Membership.objects.create(user=world.amy, organization=world.beta)
    assert _login() == (302, "/orgs/")
    page = client_for(world.amy).get("/orgs/").content.decode()
    assert 'href="/orgs/alpha/"' in page
    assert 'href="/orgs/beta/"' in page


def test_the_picker_opens_only_your_own_organizations(world: World) -> None:
    client = client_for(world.amy)
    assert client.get("/orgs/alpha/")["Location"].startswith("http://alpha.localhost/auth/handoff/")
    assert client.get("/orgs/beta/").status_code == 404


def test_a_person_in_no_organization_is_told_so(world: World) -> None:
    assert _login(email="olga@nowhere.test") == (302, "/orgs/")
    assert b"not a member of any organization" in client_for(world.olga).get("/orgs/").content


def test_anonymous_visitors_of_an_organization_are_sent_to_log_in(world: World) -> None:
    response = client_for(None, world.alpha).get("/")
    assert response.status_code == 302
    assert response["Location"] == "http://localhost/login/?next=http%3A%2F%2Falpha.localhost%2F"


def test_someone_logged_in_on_the_public_site_is_carried_over_without_a_form(world: World) -> None:
    public = client_for(world.amy)
    response = public.get("/login/", {"next": "http://alpha.localhost/"})
    assert response["Location"].startswith("http://alpha.localhost/auth/handoff/")


def test_logging_out_on_an_organization_logs_out_of_the_public_site_too(world: World) -> None:
    public = client_for(world.amy)
    tenant = client_for(world.amy, world.alpha)
    assert tenant.get("/logout/").status_code == 405  # a link cannot log anyone out
    response = tenant.post("/logout/")
    assert tenant.get("/").status_code == 302  # this host's session is gone
    to_public = urlsplit(response["Location"])
    assert to_public.netloc == "localhost"
    assert to_public.path == "/logout/"
    response = public.get(to_public.path, parse_qs(to_public.query))
    assert response["Location"] == "http://localhost/login/?logged_out=1"
    assert public.get("/orgs/").status_code == 302  # and so is the public one


def test_a_forged_logout_link_does_nothing(world: World) -> None:
    public = client_for(world.amy)
    assert public.get("/logout/", {"token": "forged"}).status_code == 405
    assert public.get("/orgs/").status_code == 200


def test_logging_out_is_audited_once(world: World) -> None:
    from apps.tenancy.models import AuditEvent

    tenant = client_for(world.amy, world.alpha)
    response = tenant.post("/logout/")
    to_public = urlsplit(response["Location"])
    client_for(world.amy).get(to_public.path, parse_qs(to_public.query))
    events = AuditEvent.objects.filter(action="auth.logout")
    assert [event.actor_email for event in events] == ["amy@alpha.test"]
