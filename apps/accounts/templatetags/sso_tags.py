from django import template

from apps.accounts.sso_backends import platform_providers

register = template.Library()


@register.simple_tag
def sso_providers() -> list[tuple[str, str]]:
    """(backend name, title) of GitHub/Google when their credentials are set."""
    return platform_providers()
