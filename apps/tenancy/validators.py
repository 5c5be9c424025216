import re

from django.core.exceptions import ValidationError

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")

# Subdomains the platform keeps for itself, now or later.
RESERVED_SLUGS = frozenset(
    {
        "admin", "api", "app", "assets", "auth", "billing", "blog", "cdn", "dashboard",
        "docs", "ftp", "help", "healthz", "internal", "login", "logout", "mail", "media",
        "metrics", "public", "root", "signup", "smtp", "sso", "staff", "static", "status",
        "support", "system", "template", "tenant", "www", "ws",
    }
)  # fmt: skip


def validate_organization_slug(slug: str) -> None:
    if not SLUG_PATTERN.match(slug):
        raise ValidationError(
            "Use 3 to 40 characters: lower-case letters, digits and hyphens, "
            "starting with a letter and not ending with a hyphen.",
            code="invalid",
        )
    if "--" in slug:
        raise ValidationError("Use single hyphens only.", code="invalid")
    if slug in RESERVED_SLUGS:
        raise ValidationError(f"“{slug}” is reserved. Choose another name.", code="reserved")


def schema_name_for_slug(slug: str) -> str:
    # Slugs never contain underscores, so this mapping cannot collide.
    return "org_" + slug.replace("-", "_")
