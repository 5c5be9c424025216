from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.accounts.models import User
from apps.notices.selectors import notices_recent
from apps.notices.services import notice_payload
from apps.tenancy.channels import tenant_database_sync_to_async
from apps.tenancy.groups import tenant_group
from apps.tenancy.models import Membership, Organization


@tenant_database_sync_to_async
def _snapshot(tenant: Organization, user: User) -> list[dict[str, object]] | None:
    """The latest notices, or None when the user is not a member."""
    if not user.is_authenticated:
        return None
    if not Membership.objects.filter(user=user, organization=tenant).exists():
        return None
    return [notice_payload(notice) for notice in notices_recent()]


class NoticesConsumer(AsyncJsonWebsocketConsumer):
    """Live notices for an organization's members: a snapshot, then each new one."""

    group: str | None = None

    async def connect(self) -> None:
        tenant = self.scope.get("tenant")
        if tenant is None:
            await self.close(code=4404)
            return
        snapshot = await _snapshot(tenant, self.scope["user"])
        if snapshot is None:
            await self.close(code=4403)
            return
        self.group = tenant_group("notices", tenant.schema_name)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "snapshot", "notices": snapshot})

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def notice_created(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "notice", "notice": event["notice"]})
