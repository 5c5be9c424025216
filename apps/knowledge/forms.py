"""Forms of the knowledge page: search, add a repository, upload a document. They parse
shapes only; the rules (a running workspace, supported types, the size limit) are the
services', and their refusals are shown on the field they name."""

from typing import Any

from django import forms

from apps.knowledge.documents import SUPPORTED, max_upload_bytes, size_in_mb
from apps.knowledge.models import KnowledgeSource
from apps.knowledge.services import MAX_K, MAX_QUERY_CHARS
from apps.workspaces.models import Workspace


class SearchForm(forms.Form):
    q = forms.CharField(
        label="Search",
        max_length=MAX_QUERY_CHARS,
        required=False,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Where are invoices totalled?"}),
    )
    kind = forms.ChoiceField(
        label="Kind",
        required=False,
        choices=[("", "All kinds"), *KnowledgeSource.Kind.choices],
    )
    k = forms.IntegerField(label="Results", required=False, min_value=1, max_value=MAX_K, initial=10)


class RepositoryForm(forms.Form):
    workspace = forms.TypedChoiceField(label="Workspace", coerce=int, help_text="A running workspace.")
    path = forms.CharField(
        label="Folder",
        required=False,
        max_length=500,
        help_text="The repository's folder in the workspace; empty: its top folder (/workspace).",
    )
    name = forms.CharField(
        label="Name", required=False, max_length=200, help_text="Default: the workspace's."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        running = Workspace.objects.filter(state=Workspace.State.RUNNING).order_by("name")
        field = self.fields["workspace"]
        assert isinstance(field, forms.TypedChoiceField)
        field.choices = [(workspace.pk, workspace.name) for workspace in running]


class DocumentForm(forms.Form):
    file = forms.FileField(label="Document", allow_empty_file=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["file"].help_text = f"{SUPPORTED}; at most {size_in_mb(max_upload_bytes())}."
        self.fields["file"].widget.attrs["accept"] = ".md,.markdown,.txt,.text,.rst,.html,.htm,.pdf"
