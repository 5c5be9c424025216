"""Organization settings pages on the organization's host (members only, by the
middleware; what each member may do, by @require_action in apps/tenancy/pages.py)."""

from django.urls import URLPattern, URLResolver, path

from apps.tenancy import pages

urlpatterns: list[URLPattern | URLResolver] = [
    path("settings/members/", pages.members_page, name="settings-members"),
    path("settings/members/invite/", pages.invitation_create_page, name="settings-invite"),
    path("settings/members/leave/", pages.member_leave_page, name="settings-leave"),
    path("settings/members/transfer/", pages.ownership_transfer_page, name="settings-transfer"),
    path("settings/members/<int:member_id>/role/", pages.member_role_page, name="settings-member-role"),
    path("settings/members/<int:member_id>/remove/", pages.member_remove_page, name="settings-member-remove"),
    path(
        "settings/invitations/<int:invitation_id>/revoke/",
        pages.invitation_revoke_page,
        name="settings-invitation-revoke",
    ),
    path("settings/api-keys/", pages.api_keys_page, name="settings-api-keys"),
    path("settings/api-keys/new/", pages.api_key_create_page, name="settings-api-key-create"),
    path("settings/api-keys/<int:key_id>/revoke/", pages.api_key_revoke_page, name="settings-api-key-revoke"),
    path("audit/", pages.audit_page, name="audit"),
    path("audit/export.csv", pages.audit_export, name="audit-export"),
]
