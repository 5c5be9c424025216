from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from apps.accounts.handoff import handoff_url
from apps.notices.selectors import notices_recent
from apps.tenancy import services
from apps.tenancy.audit import Actor
from apps.tenancy.forms import SignupForm
from apps.tenancy.hosts import organization_url, public_url
from apps.tenancy.selectors import organizations_of_user


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user, organization = services.signup(
                email=data["email"],
                password=data["password"],
                organization_name=data["organization_name"],
                slug=data["slug"],
                confirm_url_base=public_url(request, ""),
                actor=Actor.from_request(request),
            )
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, messages)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return HttpResponseRedirect(handoff_url(request, organization_url(request, organization)))
    status = 400 if request.method == "POST" else 200
    return render(request, "tenancy/signup.html", {"form": form}, status=status)


@login_required
@require_GET
def org_picker(request: HttpRequest) -> HttpResponse:
    organizations = organizations_of_user(user=request.user)  # type: ignore[arg-type]
    return render(request, "tenancy/org_picker.html", {"organizations": organizations})


@login_required
@require_GET
def org_open(request: HttpRequest, slug: str) -> HttpResponse:
    """Go to one of your organizations, carrying your login to its host."""
    organization = organizations_of_user(user=request.user).filter(slug=slug).first()  # type: ignore[arg-type]
    if organization is None:
        raise Http404("You are not a member of an organization at that address.")
    return HttpResponseRedirect(handoff_url(request, organization_url(request, organization)))


@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "tenancy/dashboard.html", {"notices": notices_recent()})
