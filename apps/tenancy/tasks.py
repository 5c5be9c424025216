from celery import shared_task

from apps.tenancy import services


@shared_task(name="tenancy.organization_provision")
def organization_provision_task(organization_id: int) -> str:
    return services.organization_provision(organization_id=organization_id).status
