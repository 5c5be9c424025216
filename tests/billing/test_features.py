"""The feature registry: a plan grants features, staff override them per organization,
and pages, API endpoints and services refuse what the plan lacks with a 403 that names
the feature and the plans that include it."""

import json

import pytest
from django.test import Client

from apps.accounts import sso
from apps.billing.features import FEATURES, FeatureNotInPlan, feature_check, feature_required
from apps.billing.plans import billing_account_for
from apps.billing.services import account_overrides_set
from apps.core.errors import Forbidden, Invalid
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent, OrganizationSSO
from tests.api.conftest import API, key_client, new_key
from tests.billing.plan_helpers import make_staff, plan_set
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db

SSO_SETTINGS = {
    "issuer": "https://idp.alpha.test/",
    "client_id": "agentyard",
    "client_secret": "very-secret",
    "verified_domain": "alpha.test",
    "enabled": "on",
}


def _admin_api(world: World) -> Client:
    _, raw = new_key(world, ["admin"], name="features admin")
    return key_client(raw)


def test_every_plan_feature_is_declared_with_a_description() -> None:
    assert {"sso", "knowledge", "audit_export", "multi_agent", "core_environment"} <= set(FEATURES)
    for feature in FEATURES.values():
        assert feature.description


def test_the_sso_settings_page_names_the_business_plan_when_the_team_plan_lacks_sso(world: World) -> None:
    plan_set(world.alpha, "team")
    client = client_for(world.alice, world.alpha)

    page = client.get("/settings/sso/")
    assert page.status_code == 403
    text = page.content.decode()
    assert "&#x27;sso&#x27; feature" in text
    assert "Business" in text
    assert "Team plan" in text

    refused = client.post("/settings/sso/", SSO_SETTINGS)
    assert refused.status_code == 403
    assert not OrganizationSSO.objects.filter(organization=world.alpha).exists()


def test_the_same_page_works_on_the_business_plan(world: World) -> None:
    plan_set(world.alpha, "business")
    page = client_for(world.alice, world.alpha).get("/settings/sso/")
    assert page.status_code == 200


def test_the_audit_export_api_refuses_with_the_feature_and_the_plans_that_have_it(world: World) -> None:
    plan_set(world.alpha, "team")
    response = _admin_api(world).get(f"{API}/audit-events/export")
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "feature_not_in_plan"
    assert body["feature"] == "audit_export"
    assert body["plans"] == ["business", "reserved"]
    assert "'audit_export' feature" in body["detail"]
    assert "Business" in body["detail"]
    # The API's usual error envelope is there too.
    assert body["error"]["code"] == "feature_not_in_plan"
    assert body["error"]["message"] == body["detail"]
    # Reading the log (no export) is not the guarded feature.
    assert _admin_api(world).get(f"{API}/audit-events").status_code == 200


def test_the_audit_export_page_is_refused_on_the_team_plan(world: World) -> None:
    plan_set(world.alpha, "team")
    response = client_for(world.alice, world.alpha).get("/audit/export.csv")
    assert response.status_code == 403
    assert "Business" in response.content.decode()


def test_a_knowledge_api_view_class_is_guarded_after_authentication(world: World) -> None:
    plan_set(world.alpha, "free")
    response = _admin_api(world).get(f"{API}/knowledge/search", {"q": "release"})
    assert response.status_code == 403
    body = response.json()
    assert body["feature"] == "knowledge"
    assert body["plans"] == ["payg", "team", "business", "reserved"]
    # A visitor without a key still gets 401, not a statement about the plan.
    stranger = client_for(None, world.alpha).get(f"{API}/knowledge/search", {"q": "x"})
    assert stranger.status_code == 401
    assert "feature" not in stranger.json()


def test_the_sso_service_refuses_without_the_feature(world: World) -> None:
    plan_set(world.alpha, "team")
    with pytest.raises(FeatureNotInPlan) as refused:
        sso.sso_settings_save(
            actor=Actor(user=world.alice),
            organization=world.alpha,
            issuer="https://idp.alpha.test/",
            client_id="agentyard",
            client_secret="x",
            verified_domain="alpha.test",
            sso_required=False,
            enabled=True,
        )
    assert refused.value.status == 403
    assert refused.value.feature == "sso"
    assert refused.value.plans == ["business", "reserved"]


def test_staff_grant_a_feature_the_plan_lacks_and_the_change_is_audited(world: World) -> None:
    plan_set(world.alpha, "team")
    staff = make_staff()
    account_overrides_set(actor=Actor(user=staff), organization=world.alpha, feature_overrides={"sso": True})

    assert client_for(world.alice, world.alpha).get("/settings/sso/").status_code == 200
    feature_check(organization=world.alpha, key="sso")  # no error
    event = AuditEvent.objects.get(organization=world.alpha, action="billing.overrides_changed")
    assert event.changes["after"]["feature_overrides"] == {"sso": True}
    # Beta's plan is untouched by Alpha's override.
    plan_set(world.beta, "team")
    with pytest.raises(FeatureNotInPlan):
        feature_check(organization=world.beta, key="sso")


def test_staff_can_take_a_feature_away_from_a_plan_that_has_it(world: World) -> None:
    plan_set(world.alpha, "business")
    account_overrides_set(
        actor=Actor(user=make_staff()), organization=world.alpha, feature_overrides={"knowledge": False}
    )
    assert _admin_api(world).get(f"{API}/knowledge/search", {"q": "x"}).status_code == 403


def test_only_staff_override_and_bad_overrides_change_nothing(world: World) -> None:
    plan_set(world.alpha, "team")
    with pytest.raises(Forbidden):
        account_overrides_set(
            actor=Actor(user=world.alice), organization=world.alpha, feature_overrides={"sso": True}
        )
    staff = Actor(user=make_staff())
    with pytest.raises(Invalid, match="Unknown feature 'teleport'"):
        account_overrides_set(actor=staff, organization=world.alpha, feature_overrides={"teleport": True})
    with pytest.raises(Invalid, match="true or false"):
        account_overrides_set(actor=staff, organization=world.alpha, feature_overrides={"sso": "yes"})
    with pytest.raises(Invalid, match="whole number"):
        account_overrides_set(actor=staff, organization=world.alpha, limit_overrides={"members": -1})
    account = billing_account_for(world.alpha)
    assert account.feature_overrides == {}
    assert account.limit_overrides == {}


def test_an_unknown_feature_key_fails_where_it_is_declared() -> None:
    with pytest.raises(KeyError, match="teleport"):
        feature_required("teleport")


def test_the_knowledge_page_tells_a_free_organization_which_plans_have_it(world: World) -> None:
    plan_set(world.alpha, "free")
    page = client_for(world.amy, world.alpha).get("/knowledge/")
    assert page.status_code == 403
    text = page.content.decode()
    assert "Not in your plan" in text
    assert "Pay as you go, Team, Business and Reserved capacity plans include" in text


def test_a_guarded_django_view_class_refuses_json_clients_with_the_same_body(world: World) -> None:
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory
    from django.views import View

    @feature_required("multi_agent")
    class Planner(View):
        def get(self, request: HttpRequest) -> HttpResponse:
            return HttpResponse("planned")

    plan_set(world.alpha, "free")
    request = RequestFactory().get("/planner", HTTP_ACCEPT="application/json")
    request.tenant = world.alpha  # type: ignore[attr-defined]  # what the tenant middleware sets
    refused = Planner.as_view()(request)
    assert isinstance(refused, HttpResponse)
    assert refused.status_code == 403
    body = json.loads(refused.content)
    assert (body["code"], body["feature"], body["plans"]) == (
        "feature_not_in_plan",
        "multi_agent",
        ["team", "business", "reserved"],
    )
    plan_set(world.alpha, "team")
    allowed = Planner.as_view()(request)
    assert isinstance(allowed, HttpResponse)
    assert allowed.content == b"planned"
