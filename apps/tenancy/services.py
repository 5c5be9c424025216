import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_tenants.utils import schema_context, schema_exists

from apps.accounts.email_confirmation import email_confirmation_send
from apps.accounts.models import User
from apps.tenancy import provisioning
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.hosts import organization_host
from apps.tenancy.models import Domain, Membership, Organization
from apps.tenancy.validators import schema_name_for_slug, validate_organization_slug

logger = logging.getLogger(__name__)


@transaction.atomic
def organization_create(
    *, name: str, slug: str, created_by: User | None, provision_async: bool = True
) -> Organization:
    """Create an organization, its subdomain and its owner; its schema is made afterwards.

    The schema is cloned by a Celery task once this transaction commits, so the
    request that signs up never waits on DDL; the organization shows "being set
    up" until the task marks it active.
    """
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the organization a name."})
    try:
        validate_organization_slug(slug)
    except ValidationError as exc:
        raise ValidationError({"slug": exc.messages}) from None
    taken = ValidationError({"slug": "That address is taken. Choose another."}, code="taken")
    if Organization.objects.filter(slug=slug).exists():
        raise taken
    try:
        with transaction.atomic():
            organization = Organization.objects.create(
                name=name,
                slug=slug,
                schema_name=schema_name_for_slug(slug),
                created_by=created_by,
            )
    except IntegrityError:  # the same slug signed up a moment ago
        raise taken from None
    Domain.objects.create(domain=organization_host(organization), tenant=organization, is_primary=True)
    if created_by is not None:
        Membership.objects.create(user=created_by, organization=organization, role=Membership.Role.OWNER)
    if provision_async:
        from apps.tenancy.tasks import organization_provision_task

        transaction.on_commit(lambda: organization_provision_task.delay(organization.pk))
    return organization


def organization_provision(*, organization_id: int) -> Organization:
    """Give the organization its schema and mark it active. Safe to run twice."""
    organization = Organization.objects.get(pk=organization_id)
    if organization.status not in {Organization.Status.PROVISIONING, Organization.Status.FAILED}:
        return organization  # done already, or suspended: provisioning must not reactivate it
    try:
        with transaction.atomic():
            if not schema_exists(organization.schema_name):
                provisioning.schema_clone_from_template(schema_name=organization.schema_name)
            with schema_context(organization.schema_name):
                from apps.notices.services import notice_create

                notice_create(
                    title=f"Welcome to {organization.name}",
                    body="Your organization is ready. Workspaces and agents will appear here.",
                    level="success",
                )
            Organization.objects.filter(pk=organization.pk).update(
                status=Organization.Status.ACTIVE,
                status_detail="",
                provisioned_at=timezone.now(),
            )
    except Exception as exc:
        logger.exception("Provisioning %s failed", organization.slug)
        Organization.objects.filter(pk=organization.pk).update(
            status=Organization.Status.FAILED, status_detail=str(exc)[:500]
        )
        raise
    organization.refresh_from_db()
    return organization


@transaction.atomic
def organization_delete(*, organization: Organization) -> None:
    schema_name = organization.schema_name
    Organization.objects.filter(pk=organization.pk).delete()
    provisioning.schema_drop(schema_name=schema_name)
    # Its knowledge index too, once the deletion holds (a rollback must not cost it the
    # index); Chroma unreachable: logged, and knowledge.prune's sweep drops it later.
    from apps.knowledge.services import organization_collections_drop

    transaction.on_commit(lambda: organization_collections_drop(schema_name=schema_name))


@transaction.atomic
def signup(
    *,
    email: str,
    password: str,
    organization_name: str,
    slug: str,
    confirm_url_base: str,
    actor: Actor | None = None,
) -> tuple[User, Organization]:
    """A new person and their organization, with them as its owner.

    Their address is unconfirmed until they open the link mailed to it
    (`confirm_url_base`: the public site's scheme and host)."""
    if User.objects.filter(email__iexact=email.strip()).exists():
        raise ValidationError({"email": "An account with this email exists. Log in instead."})
    user = User.objects.create_user(email=email, password=password)
    organization = organization_create(name=organization_name, slug=slug, created_by=user)
    context = actor or Actor()
    audit_record(
        actor=Actor(user=user, ip=context.ip, user_agent=context.user_agent, request_id=context.request_id),
        organization=organization,
        action="organization.created",
        target=organization,
        after={"name": organization.name, "slug": organization.slug, "owner": user.email},
    )
    email_confirmation_send(user=user, url_base=confirm_url_base)
    return user, organization
