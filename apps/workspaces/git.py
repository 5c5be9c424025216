"""Git in a workspace: real git, run inside the sandbox through the runtime's exec.

A token for https comes from one of the organization's secrets and reaches git
only through the environment of that one process (GIT_CONFIG_COUNT/KEY/VALUE:
an `http.extraHeader`), so it is never written into .git/config, the command
line or any file of the workspace, and it is scrubbed from every message."""

import base64
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from apps.core.errors import Conflict, Invalid
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization
from apps.workspaces.models import Workspace
from apps.workspaces.services import ExecOutcome, secret_value, workspace_exec
from apps.workspaces.validation import validate_path

GIT_TIMEOUT = 300.0
BRANCH_NAME = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)[A-Za-z0-9._/-]{1,200}(?<!\.lock)(?<![/.])$")
REMOTE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
# Never ask a person for anything: there is nobody at the sandbox's terminal for git.
BASE_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}


@dataclass(frozen=True)
class GitOutput:
    output: str
    commit: str = ""


@dataclass(frozen=True)
class StatusEntry:
    path: str
    kind: str  # "changed" | "renamed" | "unmerged" | "untracked"
    index: str = "."  # X of porcelain v2's XY: the staged change
    worktree: str = "."  # Y: the unstaged change
    orig_path: str = ""


@dataclass(frozen=True)
class GitStatus:
    branch: str
    commit: str
    upstream: str
    ahead: int
    behind: int
    entries: list[StatusEntry] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.entries


class _Credentials:
    """The environment that hands git a token, and a scrubber for what git prints."""

    def __init__(self, secret_name: str | None) -> None:
        self.env: dict[str, str] = dict(BASE_ENV)
        self._hidden: list[str] = []
        if secret_name:
            token = secret_value(name=secret_name)
            basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
            self.env |= {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            }
            self._hidden = [token, basic]

    def scrub(self, text: str) -> str:
        for hidden in self._hidden:
            text = text.replace(hidden, "********")
        return text


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _git(
    *,
    actor: Actor,
    workspace: Workspace,
    args: list[str],
    cwd: str,
    credentials: _Credentials | None = None,
    extra_env: dict[str, str] | None = None,
    what: str,
) -> ExecOutcome:
    credentials = credentials or _Credentials(None)
    outcome = workspace_exec(
        actor=actor,
        workspace=workspace,
        argv=["git", *args],
        cwd=cwd,
        env={**credentials.env, **(extra_env or {})},
        timeout=GIT_TIMEOUT,
    )
    if outcome.timed_out:
        raise Conflict(
            f"git {what} took longer than {GIT_TIMEOUT:g} seconds and was stopped.", code="git_timeout"
        )
    if outcome.exit_code != 0:
        message = (
            credentials.scrub(_tail(outcome.stderr or outcome.stdout)) or f"exit code {outcome.exit_code}"
        )
        if re.search(r"Authentication failed|could not read Username|returned error: 40[13]", message):
            raise Invalid(
                f"git {what}: the server refused the credentials. {message}",
                code="git_auth_failed",
                field="secret",
            )
        if "not a git repository" in message:
            raise Invalid(f"git {what}: {message}", code="not_a_repository", field="path")
        raise Invalid(f"git {what} failed: {message}", code="git_failed")
    return ExecOutcome(
        **{
            **outcome.__dict__,
            "stdout": credentials.scrub(outcome.stdout),
            "stderr": credentials.scrub(outcome.stderr),
        }
    )


def _validate_url(url: str, *, with_secret: bool) -> str:
    url = url.strip()
    if not url or url.startswith("-") or any(ord(char) < 32 for char in url) or len(url) > 2000:
        raise Invalid(
            "Give a repository: a path in the workspace, a file:// or an https:// URL.", field="url"
        )
    parts = urlsplit(url)
    if parts.scheme in {"http", "https"}:
        if parts.username or parts.password:
            raise Invalid(
                "Do not put credentials in the URL (they would be stored in .git/config);"
                " name a secret holding the token instead.",
                field="url",
            )
        if not parts.hostname:
            raise Invalid("The URL has no host.", field="url")
        return url
    if with_secret:
        raise Invalid("A token is sent only to http(s) URLs.", field="secret")
    if parts.scheme == "file":
        return url
    if "://" in url or (":" in url.split("/", 1)[0] and not url.startswith(".")):
        raise Invalid("Only paths in the workspace, file:// and http(s):// URLs can be cloned.", field="url")
    return validate_path(url, field="url", allow_root=False)


def git_clone(
    *,
    actor: Actor,
    organization: Organization,
    workspace: Workspace,
    url: str,
    path: str,
    secret: str | None = None,
    branch: str | None = None,
) -> GitOutput:
    """Clone `url` (a path in the workspace, file://, or http(s) with the named secret's
    token) into `path` of the workspace."""
    url = _validate_url(url, with_secret=bool(secret))
    path = validate_path(path, allow_root=False)
    args = ["clone", "--quiet"]
    if branch:
        args += ["--branch", _branch_name(branch)]
    credentials = _Credentials(secret)
    _git(
        actor=actor,
        workspace=workspace,
        args=[*args, "--", url, path],
        cwd="",
        credentials=credentials,
        what="clone",
    )
    head = _git(actor=actor, workspace=workspace, args=["rev-parse", "HEAD"], cwd=path, what="rev-parse")
    audit_record(
        actor=actor,
        organization=organization,
        action="workspace.git_cloned",
        target=workspace,
        after={"url": url, "path": path, "secret": secret or ""},
    )
    return GitOutput(output=f"Cloned {url} into {path}", commit=head.stdout.strip())


def _branch_name(name: str) -> str:
    if not BRANCH_NAME.match(name):
        raise Invalid(f"{name!r} is not a valid branch name.", field="branch")
    return name


def git_branch(
    *, actor: Actor, workspace: Workspace, path: str, name: str, create: bool = False
) -> GitOutput:
    """Switch to branch `name`, creating it from HEAD when `create`."""
    path = validate_path(path)
    name = _branch_name(name)
    args = ["switch", "--create", name] if create else ["switch", name]
    outcome = _git(actor=actor, workspace=workspace, args=args, cwd=path, what="switch")
    return GitOutput(output=(outcome.stdout + outcome.stderr).strip() or f"On branch {name}")


def parse_porcelain_v2(output: str) -> GitStatus:
    """`git status --porcelain=v2 --branch -z` into a GitStatus."""
    branch = commit = upstream = ""
    ahead = behind = 0
    entries: list[StatusEntry] = []
    records = output.split("\0")
    index = 0
    while index < len(records):
        record = records[index]
        index += 1
        if not record:
            continue
        if record.startswith("# "):
            key, _, value = record[2:].partition(" ")
            if key == "branch.oid":
                commit = "" if value == "(initial)" else value
            elif key == "branch.head":
                branch = "" if value == "(detached)" else value
            elif key == "branch.upstream":
                upstream = value
            elif key == "branch.ab":
                plus, minus = value.split()
                ahead, behind = int(plus), -int(minus)
        elif record.startswith("1 "):
            fields = record.split(" ", 8)
            entries.append(StatusEntry(fields[8], "changed", fields[1][0], fields[1][1]))
        elif record.startswith("2 "):
            fields = record.split(" ", 9)
            orig = records[index] if index < len(records) else ""
            index += 1
            entries.append(StatusEntry(fields[9], "renamed", fields[1][0], fields[1][1], orig))
        elif record.startswith("u "):
            fields = record.split(" ", 10)
            entries.append(StatusEntry(fields[10], "unmerged", fields[1][0], fields[1][1]))
        elif record.startswith("? "):
            entries.append(StatusEntry(record[2:], "untracked", "?", "?"))
    return GitStatus(
        branch=branch, commit=commit, upstream=upstream, ahead=ahead, behind=behind, entries=entries
    )


def git_status(*, actor: Actor, workspace: Workspace, path: str) -> GitStatus:
    path = validate_path(path)
    outcome = _git(
        actor=actor,
        workspace=workspace,
        args=["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"],
        cwd=path,
        what="status",
    )
    return parse_porcelain_v2(outcome.stdout)


def git_diff(*, actor: Actor, workspace: Workspace, path: str, staged: bool = False) -> str:
    path = validate_path(path)
    args = ["diff", "--no-color", "--no-ext-diff"] + (["--staged"] if staged else [])
    return _git(actor=actor, workspace=workspace, args=args, cwd=path, what="diff").stdout


def git_commit(
    *,
    actor: Actor,
    workspace: Workspace,
    path: str,
    message: str,
    all_changes: bool = True,
    author_name: str | None = None,
    author_email: str | None = None,
) -> GitOutput:
    """Commit (everything, with `all_changes`), authored by the acting person, or by the
    name and address given (an agent's)."""
    path = validate_path(path)
    if not message.strip() or "\x00" in message:
        raise Invalid("Give a commit message.", field="message")
    name = (author_name or "").strip() or _actor_name(actor)
    email = (author_email or "").strip() or _actor_email(actor)
    if "\x00" in name + email or "<" in name + email or ">" in name + email or "@" not in email:
        raise Invalid("Give an author name and an email address.", field="author_email")
    identity = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    if all_changes:
        _git(actor=actor, workspace=workspace, args=["add", "--all"], cwd=path, what="add")
    status = git_status(actor=actor, workspace=workspace, path=path)
    if not any(entry.index not in {".", "?"} for entry in status.entries):
        raise Conflict("Nothing to commit: no staged changes.", code="nothing_to_commit")
    outcome = _git(
        actor=actor,
        workspace=workspace,
        args=["commit", "--quiet", "--no-verify", "-m", message],
        cwd=path,
        extra_env=identity,
        what="commit",
    )
    head = _git(actor=actor, workspace=workspace, args=["rev-parse", "HEAD"], cwd=path, what="rev-parse")
    return GitOutput(output=(outcome.stdout + outcome.stderr).strip(), commit=head.stdout.strip())


def _actor_name(actor: Actor) -> str:
    if actor.user is not None:
        return str(getattr(actor.user, "name", "") or actor.user.email.split("@")[0])
    if actor.api_key is not None:
        return f"API key {actor.api_key.name}"
    return "Agentyard"


def _actor_email(actor: Actor) -> str:
    if actor.user is not None:
        return str(actor.user.email)
    if actor.api_key is not None:
        return f"key-{actor.api_key.prefix}@agents.agentyard.invalid"
    return "system@agentyard.invalid"


def git_push(
    *,
    actor: Actor,
    organization: Organization,
    workspace: Workspace,
    path: str,
    remote: str = "origin",
    branch: str | None = None,
    secret: str | None = None,
) -> GitOutput:
    """Push `branch` (default: the current one) to `remote`, with the named secret's token."""
    path = validate_path(path)
    if not REMOTE_NAME.match(remote) or remote.startswith("-"):
        raise Invalid(f"{remote!r} is not a valid remote name.", field="remote")
    ref = _branch_name(branch) if branch else "HEAD"
    credentials = _Credentials(secret)
    outcome = _git(
        actor=actor,
        workspace=workspace,
        args=["push", "--porcelain", "--set-upstream", remote, ref],
        cwd=path,
        credentials=credentials,
        what="push",
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="workspace.git_pushed",
        target=workspace,
        after={"path": path, "remote": remote, "ref": ref, "secret": secret or ""},
    )
    return GitOutput(output=(outcome.stdout + outcome.stderr).strip())
