"""/api/v1/prompts: spread into config/urls_api.py (plain paths, so the isolation
suite sees every route)."""

from django.urls import URLPattern, path

from apps.prompts import api

urlpatterns: list[URLPattern] = [
    path("prompts", api.PromptList.as_view(), name="api-prompts"),
    path("prompts/defaults", api.PromptDefaults.as_view(), name="api-prompt-defaults"),
    path("prompts/render", api.PromptRenderByName.as_view(), name="api-prompt-render-by-name"),
    path("prompts/<int:prompt_id>", api.PromptDetail.as_view(), name="api-prompt"),
    path("prompts/<int:prompt_id>/versions", api.PromptVersions.as_view(), name="api-prompt-versions"),
    path(
        "prompts/<int:prompt_id>/versions/<int:prompt_version>",
        api.PromptVersionDetail.as_view(),
        name="api-prompt-version",
    ),
    path("prompts/<int:prompt_id>/diff", api.PromptDiff.as_view(), name="api-prompt-diff"),
    path("prompts/<int:prompt_id>/rollback", api.PromptRollback.as_view(), name="api-prompt-rollback"),
    path("prompts/<int:prompt_id>/render", api.PromptRender.as_view(), name="api-prompt-render"),
]
