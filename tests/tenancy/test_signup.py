import pytest

from apps.accounts.models import User
from apps.tenancy.models import Domain, Membership, Organization
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db

GOOD = {
    "email": "Carol@Example.test",
    "password": "a long and unusual passphrase",
    "organization_name": "Carol's Robots",
    "slug": "carols-robots",
}


def _signup(**changes: str) -> tuple[int, str]:
    response = client_for(None).post("/signup/", {**GOOD, **changes})
    return response.status_code, response.content.decode()


def _nothing_written() -> bool:
    return (
        not User.objects.filter(email="carol@example.test").exists()
        and not Organization.objects.filter(slug="carols-robots").exists()
    )


def test_signing_up_creates_the_person_the_organization_and_ownership(world: World) -> None:
    client = client_for(None)
    response = client.post("/signup/", GOOD)
    assert response.status_code == 302
    assert response["Location"].startswith("http://carols-robots.localhost/auth/handoff/?token=")
    user = User.objects.get(email="carol@example.test")  # stored lower-case
    organization = Organization.objects.get(slug="carols-robots")
    assert organization.name == "Carol's Robots"
    assert organization.status == Organization.Status.PROVISIONING
    assert organization.created_by == user
    assert Domain.objects.get(tenant=organization).domain == "carols-robots.localhost"
    assert Membership.objects.get(organization=organization).role == Membership.Role.OWNER
    assert Membership.objects.get(organization=organization).user == user
    assert client.session["_auth_user_id"] == str(user.pk)  # logged in


def test_the_signup_page_shows_the_form() -> None:
    response = client_for(None).get("/signup/")
    assert response.status_code == 200
    assert b"Create your organization" in response.content


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("alpha", "That address is taken"),
        ("www", "is reserved"),
        ("admin", "is reserved"),
        ("api", "is reserved"),
        ("public", "is reserved"),
        ("Bad_Slug!", "lower-case letters, digits and hyphens"),
        ("ab", "3 to 40 characters"),
        ("-leading", "starting with a letter"),
        ("trailing-", "not ending with a hyphen"),
        ("x" * 41, "at most 40 characters"),
    ],
)
def test_a_bad_address_is_a_form_error_and_writes_nothing(world: World, slug: str, message: str) -> None:
    status, page = _signup(slug=slug)
    assert status == 400
    assert message in page.replace("&#x27;", "'")
    assert _nothing_written()


def test_an_email_already_in_use_is_a_form_error(world: World) -> None:
    status, page = _signup(email="ALICE@alpha.test")
    assert status == 400
    assert "An account with this email exists" in page
    assert not Organization.objects.filter(slug="carols-robots").exists()


def test_a_weak_password_is_a_form_error(world: World) -> None:
    status, page = _signup(password="password")
    assert status == 400
    assert "too common" in page
    assert _nothing_written()


def test_missing_fields_are_form_errors(world: World) -> None:
    response = client_for(None).post("/signup/", {})
    assert response.status_code == 400
    assert response.content.decode().count("This field is required.") == 4
