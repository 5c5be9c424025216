"""/api/v1/: reached on an organization's host (browser session) or anywhere with an API key."""

from django.urls import path

from apps.tenancy import api

urlpatterns = [
    path("organization", api.OrganizationView.as_view(), name="api-organization"),
    path("organization/transfer-ownership", api.OwnershipTransferView.as_view(), name="api-transfer"),
    path("members", api.MemberList.as_view(), name="api-members"),
    path("members/<int:member_id>", api.MemberDetail.as_view(), name="api-member"),
    path("invitations", api.InvitationList.as_view(), name="api-invitations"),
    path("invitations/<int:invitation_id>", api.InvitationDetail.as_view(), name="api-invitation"),
    path("api-keys", api.ApiKeyList.as_view(), name="api-keys"),
    path("api-keys/<int:key_id>", api.ApiKeyDetail.as_view(), name="api-key"),
    path("audit-events", api.AuditEventList.as_view(), name="api-audit-events"),
    path("audit-events/export", api.AuditEventExport.as_view(), name="api-audit-export"),
]
