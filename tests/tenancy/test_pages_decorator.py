"""@require_action: the page side of the roles table."""

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from apps.tenancy.decorators import require_action
from apps.tenancy.models import Membership
from tests.conftest import World

pytestmark = pytest.mark.django_db


@require_action("audit.view")
def _audit_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("the log")


def _request(world: World, membership: Membership | None) -> HttpRequest:
    request = RequestFactory().get("/audit/", HTTP_HOST="alpha.localhost")
    request.tenant = world.alpha  # type: ignore[attr-defined]
    request.membership = membership  # type: ignore[attr-defined]
    request.user = membership.user if membership else world.olga
    return request


def test_a_role_that_allows_the_action_gets_the_view(world: World) -> None:
    owner = Membership.objects.get(organization=world.alpha, user=world.alice)
    assert _audit_view(_request(world, owner)).content == b"the log"


def test_a_role_that_does_not_gets_a_403_naming_what_is_missing(world: World) -> None:
    member = Membership.objects.get(organization=world.alpha, user=world.amy)
    response = _audit_view(_request(world, member))
    assert response.status_code == 403
    page = response.content.decode()
    assert "Your role (member) does not allow this" in page
    assert "read and export the audit log" in page
    assert "<code>audit.view</code>" in page
    assert "Allowed for: admin, owner." in page


def test_no_membership_is_refused_too(world: World) -> None:
    assert _audit_view(_request(world, None)).status_code == 403


def test_an_unknown_action_fails_at_import_time() -> None:
    with pytest.raises(KeyError, match=r"audit\.veiw"):
        require_action("audit.veiw")
