"""/api/v1/: reached on an organization's host (browser session) or anywhere with an API key."""

from django.urls import path

from apps.agents import urls_api as agents_urls
from apps.agents import urls_tools as agents_tools_urls
from apps.billing import api as billing_api
from apps.knowledge import urls_api as knowledge_urls
from apps.llm import api as llm_api
from apps.prompts import urls_api as prompts_urls
from apps.tenancy import api
from apps.workspaces import api as workspaces_api

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
    path("workspaces", workspaces_api.WorkspaceList.as_view(), name="api-workspaces"),
    path("workspaces/<int:workspace_id>", workspaces_api.WorkspaceDetail.as_view(), name="api-workspace"),
    path(
        "workspaces/<int:workspace_id>/start",
        workspaces_api.WorkspaceStart.as_view(),
        name="api-workspace-start",
    ),
    path(
        "workspaces/<int:workspace_id>/stop",
        workspaces_api.WorkspaceStop.as_view(),
        name="api-workspace-stop",
    ),
    path(
        "workspaces/<int:workspace_id>/archive",
        workspaces_api.WorkspaceArchive.as_view(),
        name="api-workspace-archive",
    ),
    path(
        "workspaces/<int:workspace_id>/exec",
        workspaces_api.WorkspaceExec.as_view(),
        name="api-workspace-exec",
    ),
    path(
        "workspaces/<int:workspace_id>/files",
        workspaces_api.WorkspaceFiles.as_view(),
        name="api-workspace-files",
    ),
    path("workspaces/<int:workspace_id>/git/clone", workspaces_api.GitClone.as_view(), name="api-git-clone"),
    path(
        "workspaces/<int:workspace_id>/git/branch", workspaces_api.GitBranch.as_view(), name="api-git-branch"
    ),
    path(
        "workspaces/<int:workspace_id>/git/status",
        workspaces_api.GitStatusView.as_view(),
        name="api-git-status",
    ),
    path("workspaces/<int:workspace_id>/git/diff", workspaces_api.GitDiffView.as_view(), name="api-git-diff"),
    path(
        "workspaces/<int:workspace_id>/git/commit", workspaces_api.GitCommit.as_view(), name="api-git-commit"
    ),
    path("workspaces/<int:workspace_id>/git/push", workspaces_api.GitPush.as_view(), name="api-git-push"),
    path("secrets", workspaces_api.SecretList.as_view(), name="api-secrets"),
    path("secrets/<int:secret_id>", workspaces_api.SecretDetail.as_view(), name="api-secret"),
    path("llm/models", llm_api.ModelList.as_view(), name="api-llm-models"),
    path("llm/credentials", llm_api.CredentialList.as_view(), name="api-llm-credentials"),
    path("llm/usage", llm_api.UsageView.as_view(), name="api-llm-usage"),
    path("billing", billing_api.AccountView.as_view(), name="api-billing"),
    path("billing/plans", billing_api.PlanList.as_view(), name="api-billing-plans"),
    path("billing/usage", billing_api.UsageView.as_view(), name="api-billing-usage"),
    path("billing/invoices", billing_api.InvoiceList.as_view(), name="api-billing-invoices"),
    path("billing/budget", billing_api.BudgetView.as_view(), name="api-billing-budget"),
    path("billing/checkout", billing_api.CheckoutView.as_view(), name="api-billing-checkout"),
    *prompts_urls.urlpatterns,
    *knowledge_urls.urlpatterns,
    *agents_urls.urlpatterns,
    *agents_tools_urls.urlpatterns,
]
