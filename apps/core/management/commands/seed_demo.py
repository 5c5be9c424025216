"""`manage.py seed_demo`: the demo organization and logins that `make run` prints. Idempotent.

Passwords are made up on the first run and kept in the credentials file (mode 600), so every
later run prints, and sets, the same ones; DEMO_PASSWORD, when set, is used for both accounts
instead and is not written anywhere.
"""

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import User
from apps.tenancy.hosts import organization_host
from apps.tenancy.models import Membership, Organization
from apps.tenancy.services import organization_create, organization_provision
from config.env import env_str

ADMIN_EMAIL = "admin@agentyard.local"
DEMO_EMAIL = "demo@agentyard.local"
DEMO_SLUG = "demo"
DEMO_NAME = "Demo"
DEMO_WORKSPACE = "demo"


class Command(BaseCommand):
    help = "Create the demo organization, a staff superuser and the demo organization's owner."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--credentials",
            type=Path,
            default=Path(settings.BASE_DIR) / ".run" / "credentials.json",
            help="where the generated passwords are kept (default: .run/credentials.json)",
        )
        parser.add_argument("--json", action="store_true", help="print the logins as one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        passwords = _passwords(options["credentials"])
        with transaction.atomic():
            admin = _user_ensure(email=ADMIN_EMAIL, password=passwords["admin"], staff=True)
            demo = _user_ensure(email=DEMO_EMAIL, password=passwords["demo"], staff=False)
            organization = Organization.objects.filter(slug=DEMO_SLUG).first()
            created = organization is None
            if organization is None:
                organization = organization_create(
                    name=DEMO_NAME, slug=DEMO_SLUG, created_by=demo, provision_async=False
                )
        # Outside the transaction above: provisioning marks a failure on the row and re-raises.
        try:
            organization = organization_provision(organization_id=organization.pk)
        except Exception as exc:  # any failure: the row says "Set-up failed"; say why in one line
            raise CommandError(f"setting up the demo organization failed: {exc}") from exc
        membership, _ = Membership.objects.get_or_create(
            user=demo, organization=organization, defaults={"role": Membership.Role.OWNER}
        )
        if membership.role != Membership.Role.OWNER:
            membership.role = Membership.Role.OWNER
            membership.save(update_fields=["role"])

        if created:
            _demo_plan_set(organization=organization, staff=admin)
        _demo_workspace_ensure(organization=organization, owner=demo)

        logins = {
            "organization": {"slug": organization.slug, "host": organization_host(organization)},
            "admin": {"email": admin.email, "password": passwords["admin"]},
            "demo": {"email": demo.email, "password": passwords["demo"]},
        }
        if options["json"]:
            self.stdout.write(json.dumps(logins))
            return
        self.stdout.write(f"Organization {organization.name!r} at {logins['organization']['host']}")
        self.stdout.write(f"Owner: {demo.email} / {passwords['demo']}")
        self.stdout.write(f"Staff: {admin.email} / {passwords['admin']}")


def _demo_plan_set(*, organization: Organization, staff: User) -> None:
    """A new demo organization starts on the Business plan, so every feature can be tried
    (new organizations otherwise start on BILLING_DEFAULT_PLAN, Free); later runs leave
    whatever plan it was moved to."""
    from apps.billing.models import Plan
    from apps.billing.services import plan_change
    from apps.tenancy.audit import Actor

    business = Plan.objects.filter(key="business").first()
    if business is not None:
        plan_change(actor=Actor(user=staff), organization=organization, plan=business, by_staff=True)


def _demo_workspace_ensure(*, organization: Organization, owner: User) -> None:
    """A "demo" workspace, in the database only: its sandbox is made when someone starts
    it (the runtime may not be up yet while this runs)."""
    from django_tenants.utils import schema_context

    from apps.tenancy.audit import Actor
    from apps.workspaces.models import Workspace
    from apps.workspaces.services import workspace_create

    with schema_context(organization.schema_name):
        if Workspace.objects.exclude(state=Workspace.State.DELETED).filter(name=DEMO_WORKSPACE).exists():
            return
        workspace_create(
            actor=Actor(user=owner),
            organization=organization,
            name=DEMO_WORKSPACE,
            template="python",
            repo_url="",
            start=False,
            provision=False,
        )


def _user_ensure(*, email: str, password: str, staff: bool) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        # Our own demo addresses: nobody is waiting for a confirmation mail.
        if staff:
            return User.objects.create_superuser(
                email=email, password=password, email_verified_at=timezone.now()
            )
        return User.objects.create_user(email=email, password=password, email_verified_at=timezone.now())
    # Whatever happened to the account since, the login we print must work.
    changed = not user.is_active or not user.check_password(password)
    if changed:
        user.is_active = True
        user.set_password(password)
    if user.email_verified_at is None:
        user.email_verified_at = timezone.now()
        changed = True
    if staff and not (user.is_staff and user.is_superuser):
        user.is_staff = user.is_superuser = True
        changed = True
    if changed:
        user.save()
    return user


def _passwords(path: Path) -> dict[str, str]:
    override = env_str("DEMO_PASSWORD", "")
    if override:
        return {"admin": override, "demo": override}
    stored: Any = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {path} ({exc}); delete it to make new passwords") from None
    if not isinstance(stored, dict):
        raise CommandError(f"{path} is not a JSON object; delete it to make new passwords")
    passwords = {role: str(stored.get(role) or "") or secrets.token_urlsafe(12) for role in ("admin", "demo")}
    if passwords != stored:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(passwords, file, indent=2)
    # It holds passwords: owner only, even if it was created by hand with looser rights.
    path.chmod(0o600)
    return passwords
