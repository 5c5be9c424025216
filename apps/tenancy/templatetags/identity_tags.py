"""`{% if membership|may:"api_keys.view" %}`: templates ask the same roles table the views do."""

from django import template

from apps.tenancy.models import Membership
from apps.tenancy.roles import role_allows

register = template.Library()


@register.filter
def may(membership: Membership | None, action_key: str) -> bool:
    return membership is not None and role_allows(membership.role, action_key)
