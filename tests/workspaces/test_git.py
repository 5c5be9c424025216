"""Git in a workspace, real git inside the sandbox: clones from a path in the
workspace and from file://, branches, porcelain status, diff, commits authored by
the acting person, pushes; and over http with a token from the organization's
secrets, through the sandbox's network allow-list to a loopback git server that
requires it: the right token works, a wrong one is refused with a clear message,
and the token is nowhere in the workspace afterwards."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client, override_settings

from apps.tenancy.audit import Actor
from apps.workspaces import services
from apps.workspaces.git import parse_porcelain_v2
from apps.workspaces.models import Workspace
from tests.api.conftest import error_of
from tests.conftest import World, client_for
from tests.fakes.git_http import GitHttpServer, git_http_server
from tests.runtime_server import RuntimeServer, start_runtime, stop_runtime
from tests.workspaces.conftest import Cleanup, api_call, in_schema, make_workspace

pytestmark = pytest.mark.django_db

TOKEN = "tok_9f8e7d6c5b4a-only-for-this-test"
FIXTURE_IDENTITY = {
    "GIT_AUTHOR_NAME": "Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.test",
    "GIT_COMMITTER_NAME": "Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.test",
}


def _sh(client: Client, workspace: Workspace, command: str) -> str:
    response = api_call(
        client, "post", f"/workspaces/{workspace.pk}/exec", {"command": command, "env": FIXTURE_IDENTITY}
    )
    body = response.json()
    assert body["exit_code"] == 0, body
    return str(body["stdout"])


def test_local_and_file_clones_branch_status_diff_commit_and_push(world: World, running: Workspace) -> None:
    alice = client_for(world.alice, world.alpha)
    base = f"/workspaces/{running.pk}/git"
    _sh(
        alice,
        running,
        "git init -q -b main origin && cd origin && echo one > README.md"
        " && git add . && git commit -qm first",
    )

    local = api_call(alice, "post", f"{base}/clone", {"url": "origin", "path": "copy"})
    assert local.status_code == 200, local.content
    assert len(local.json()["commit"]) == 40
    by_file = api_call(alice, "post", f"{base}/clone", {"url": "file:///workspace/origin", "path": "copy2"})
    assert by_file.status_code == 200, by_file.content
    assert by_file.json()["commit"] == local.json()["commit"]

    branch = api_call(alice, "post", f"{base}/branch", {"path": "copy", "name": "feature/x", "create": True})
    assert branch.status_code == 200, branch.content
    _sh(alice, running, "cd copy && echo two >> README.md && echo new > added.txt")

    status = api_call(alice, "get", f"{base}/status?path=copy").json()
    assert status["branch"] == "feature/x"
    assert status["clean"] is False
    assert {(entry["path"], entry["kind"]) for entry in status["entries"]} == {
        ("README.md", "changed"),
        ("added.txt", "untracked"),
    }
    diff = api_call(alice, "get", f"{base}/diff?path=copy").json()["diff"]
    assert "+two" in diff
    assert "README.md" in diff

    commit = api_call(alice, "post", f"{base}/commit", {"path": "copy", "message": "Add two"})
    assert commit.status_code == 200, commit.content
    author = _sh(alice, running, "cd copy && git log -1 --format='%an <%ae>|%s'")
    assert author == "Alice <alice@alpha.test>|Add two\n"
    assert api_call(alice, "get", f"{base}/status?path=copy").json()["clean"] is True
    nothing = api_call(alice, "post", f"{base}/commit", {"path": "copy", "message": "Again"})
    assert nothing.status_code == 409
    assert error_of(nothing)["code"] == "nothing_to_commit"

    agent = api_call(
        alice,
        "post",
        f"{base}/commit",
        {
            "path": "copy2",
            "message": "By an agent",
            "author_name": "Agent Smith",
            "author_email": "smith@agents.test",
        },
    )
    assert agent.status_code == 409  # copy2 has no change: nothing to commit
    _sh(alice, running, "echo x > copy2/agent.txt")
    agent = api_call(
        alice,
        "post",
        f"{base}/commit",
        {
            "path": "copy2",
            "message": "By an agent",
            "author_name": "Agent Smith",
            "author_email": "smith@agents.test",
        },
    )
    assert agent.status_code == 200
    assert (
        _sh(alice, running, "cd copy2 && git log -1 --format='%an <%ae>'")
        == "Agent Smith <smith@agents.test>\n"
    )

    pushed = api_call(alice, "post", f"{base}/push", {"path": "copy", "remote": "origin"})
    assert pushed.status_code == 200, pushed.content
    assert _sh(alice, running, "cd origin && git log -1 --format=%s feature/x") == "Add two\n"


def test_git_refuses_bad_input_with_the_field(world: World, alpha_api: Client, running: Workspace) -> None:
    base = f"/workspaces/{running.pk}/git"
    cases = [
        ({"url": "https://user:pw@example.com/r.git", "path": "r"}, "clone", "url"),
        ({"url": "--upload-pack=evil", "path": "r"}, "clone", "url"),
        ({"url": "ssh://example.com/r.git", "path": "r"}, "clone", "url"),
        ({"url": "../outside", "path": "r"}, "clone", "url"),
        ({"url": "origin", "path": "../r"}, "clone", "path"),
        ({"url": "file:///workspace/x", "path": "r", "secret": "GIT_TOKEN"}, "clone", "secret"),
        ({"path": "", "name": "bad..name"}, "branch", "branch"),
        ({"path": "", "name": "-x"}, "branch", "branch"),
        ({"path": "", "remote": "--force"}, "push", "remote"),
    ]
    for body, action, field in cases:
        response = api_call(alpha_api, "post", f"{base}/{action}", body)
        assert response.status_code == 400, (body, response.content)
        assert field in error_of(response)["fields"], (body, error_of(response))
    not_a_repo = api_call(alpha_api, "get", f"{base}/status?path=")
    assert not_a_repo.status_code == 400
    assert "not a git repository" in error_of(not_a_repo)["message"]


def test_porcelain_v2_parsing_of_renames_and_branch_headers() -> None:
    output = (
        "# branch.oid 1234567890abcdef1234567890abcdef12345678\0# branch.head main\0"
        "# branch.upstream origin/main\0# branch.ab +2 -1\0"
        "1 .M N... 100644 100644 100644 aaaa bbbb src/a b.py\0"
        "2 R. N... 100644 100644 100644 aaaa bbbb R100 new name.txt\0old name.txt\0"
        "? untracked.txt\0"
    )
    status = parse_porcelain_v2(output)
    assert (status.branch, status.upstream, status.ahead, status.behind) == ("main", "origin/main", 2, 1)
    assert [
        (entry.path, entry.kind, entry.index, entry.worktree, entry.orig_path) for entry in status.entries
    ] == [
        ("src/a b.py", "changed", ".", "M", ""),
        ("new name.txt", "renamed", "R", ".", "old name.txt"),
        ("untracked.txt", "untracked", "?", "?", ""),
    ]


# Over http with a token ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def networked_runtime() -> Iterator[RuntimeServer]:
    """A runtime whose sandboxes may reach private addresses (the loopback git server)."""
    root = Path(tempfile.mkdtemp(prefix="agentyard-runtime-git-"))
    server = start_runtime(root, log_name="runtime-git.log", extra_env={"RUNTIME_ALLOW_PRIVATE_NETWORK": "1"})
    yield server
    stop_runtime(server)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    with git_http_server(tmp_path / "repos", token=TOKEN) as server:
        server.create_repository("project", {"README.md": "# project\n", "src/main.py": "print('hi')\n"})
        yield server


def _everything_in(root: Path) -> bytes:
    chunks = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                chunks.append(path.read_bytes())
            except OSError:
                continue
    return b"".join(chunks)


def test_https_clone_and_push_with_a_token_from_the_organizations_secrets(
    world: World,
    networked_runtime: RuntimeServer,
    git_server: GitHttpServer,
    workspaces_cleanup: Cleanup,
) -> None:
    alice = client_for(world.alice, world.alpha)
    with override_settings(
        RUNTIME_ADDRESS=networked_runtime.address, RUNTIME_SECRET=networked_runtime.secret
    ):
        with in_schema(world.alpha):
            services.secret_set(
                actor=Actor(user=world.alice), organization=world.alpha, name="GIT_TOKEN", value=TOKEN
            )
            services.secret_set(
                actor=Actor(user=world.alice),
                organization=world.alpha,
                name="WRONG_TOKEN",
                value="not-the-token",
            )
        workspace = make_workspace(world, name="networked", network_allow=[git_server.allow_entry])
        workspaces_cleanup.append((world.alpha, workspace))
        base = f"/workspaces/{workspace.pk}/git"
        url = git_server.url("project")

        wrong = api_call(alice, "post", f"{base}/clone", {"url": url, "path": "p", "secret": "WRONG_TOKEN"})
        assert wrong.status_code == 400, wrong.content
        error = error_of(wrong)
        assert error["code"] == "git_auth_failed"
        assert "refused the credentials" in error["message"]
        assert "secret" in error["fields"]
        assert "not-the-token" not in wrong.content.decode()

        none = api_call(alice, "post", f"{base}/clone", {"url": url, "path": "p"})
        assert none.status_code == 400
        assert error_of(none)["code"] == "git_auth_failed"

        cloned = api_call(
            alice, "post", f"{base}/clone", {"url": url, "path": "project", "secret": "GIT_TOKEN"}
        )
        assert cloned.status_code == 200, cloned.content
        assert f"x-access-token:{TOKEN}" in git_server.seen_credentials
        read = api_call(alice, "get", f"/workspaces/{workspace.pk}/files?path=project/src/main.py")
        assert read.json()["content"] == "print('hi')\n"

        api_call(
            alice, "put", f"/workspaces/{workspace.pk}/files?path=project/CHANGES.md", {"content": "- more\n"}
        )
        assert (
            api_call(alice, "post", f"{base}/commit", {"path": "project", "message": "Changes"}).status_code
            == 200
        )
        pushed = api_call(alice, "post", f"{base}/push", {"path": "project", "secret": "GIT_TOKEN"})
        assert pushed.status_code == 200, pushed.content
        assert git_server.log("project")[0] == "Changes|Alice|alice@alpha.test"

        # The token is nowhere in the workspace: not in .git/config, not in any file.
        found = api_call(
            alice,
            "post",
            f"/workspaces/{workspace.pk}/exec",
            {"command": f"grep -r -l -a -e '{TOKEN}' . ; cat project/.git/config"},
        ).json()
        assert TOKEN not in found["stdout"].replace(f"-e '{TOKEN}'", "")
        assert "extraHeader" not in found["stdout"]
        assert "url = " + url in found["stdout"]
    assert TOKEN.encode() not in _everything_in(networked_runtime.root)
