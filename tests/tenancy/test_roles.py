from io import StringIO

import pytest
from django.core.management import call_command

from apps.tenancy.models import Membership
from apps.tenancy.roles import ACTIONS, key_allows, role_allows, roles_table_markdown


def test_the_documented_role_table_is_generated_from_the_code() -> None:
    call_command("roles_table", "--check", stdout=StringIO(), stderr=StringIO())


def test_every_action_appears_in_the_table_with_its_scope() -> None:
    table = roles_table_markdown()
    for action in ACTIONS.values():
        assert f"`{action.key}`" in table
        assert f"`{action.scope}`" in table


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [
        ("owner", "sso.manage", True),
        ("admin", "sso.manage", False),
        ("admin", "members.invite", True),
        ("member", "members.invite", False),
        ("viewer", "members.view", True),
        ("billing", "api_keys.view", False),
        ("owner", "members.transfer_ownership", True),
        ("admin", "members.transfer_ownership", False),
    ],
)
def test_roles_allow_what_the_table_says(role: str, action: str, allowed: bool) -> None:
    assert role_allows(role, action) is allowed


@pytest.mark.parametrize(
    ("scopes", "action", "allowed"),
    [
        (["members:read"], "members.view", True),
        (["members:read"], "members.invite", False),
        (["members:write"], "members.view", True),  # write includes read
        (["api_keys:write"], "members.view", False),
        (["admin"], "sso.manage", True),
    ],
)
def test_api_key_scopes_allow_their_family(scopes: list[str], action: str, allowed: bool) -> None:
    from apps.tenancy.models import ApiKey

    assert key_allows(ApiKey(scopes=scopes), action) is allowed


def test_every_role_is_in_the_table() -> None:
    header = roles_table_markdown().splitlines()[5]
    for role in Membership.Role:
        assert role.label in header
