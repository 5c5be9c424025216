"""Exec and files on a running workspace (real bwrap sandbox): output beyond the
limit is cut with a visible marker, paths that leave the workspace (`..`,
absolute, a symlink pointing out) are 400 naming the field, and files can be
listed, read, written and deleted."""

import base64

import pytest
from django.test import Client, override_settings

from apps.workspaces.models import Workspace
from tests.api.conftest import error_of
from tests.workspaces.conftest import api_call

pytestmark = pytest.mark.django_db


def test_huge_output_is_cut_at_the_limit_with_a_marker_line(alpha_api: Client, running: Workspace) -> None:
    with override_settings(WORKSPACES_EXEC_MAX_OUTPUT_BYTES=1024 * 1024):
        # 20 MiB of output: the runtime keeps 1 MiB per stream, we add the marker.
        response = api_call(
            alpha_api,
            "post",
            f"/workspaces/{running.pk}/exec",
            {"command": "head -c 20971520 /dev/zero | tr '\\0' 'a'; echo done >&2"},
        )
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert body["stdout_truncated"] is True
    assert body["stdout"].endswith("\n[output truncated: limit 1 MiB]\n")
    assert len(body["stdout"]) < 1024 * 1024 + 100
    assert body["stdout"].startswith("aaaa")
    assert body["stderr"] == "done\n"
    assert body["stderr_truncated"] is False
    assert body["exit_code"] == 0


def test_a_command_past_its_timeout_is_killed_and_says_so(alpha_api: Client, running: Workspace) -> None:
    response = api_call(
        alpha_api,
        "post",
        f"/workspaces/{running.pk}/exec",
        {"command": "echo started; sleep 30", "timeout": 1},
    )
    body = response.json()
    assert body["timed_out"] is True, body
    assert body["stdout"] == "started\n"
    assert body["duration_seconds"] < 10


def test_files_list_read_write_and_delete(alpha_api: Client, running: Workspace) -> None:
    base = f"/workspaces/{running.pk}/files"
    written = api_call(alpha_api, "put", f"{base}?path=src/app.py", {"content": "print('hi')\n"})
    assert written.status_code == 200, written.content
    assert written.json()["kind"] == "file"
    assert written.json()["size"] == 12
    binary = base64.b64encode(bytes(range(256))).decode()
    api_call(alpha_api, "put", f"{base}?path=blob.bin", {"content": binary, "encoding": "base64"})

    root = api_call(alpha_api, "get", f"{base}?path=").json()
    assert root["kind"] == "dir"
    names = [(entry["name"], entry["kind"]) for entry in root["entries"]]
    assert names[0] == ("src", "dir")  # directories first
    assert ("blob.bin", "file") in names
    assert root["content"] is None

    text = api_call(alpha_api, "get", f"{base}?path=src/app.py").json()
    assert (text["content"], text["encoding"], text["truncated"]) == ("print('hi')\n", "utf-8", False)
    blob = api_call(alpha_api, "get", f"{base}?path=blob.bin").json()
    assert blob["encoding"] == "base64"
    assert base64.b64decode(blob["content"]) == bytes(range(256))

    # The sandbox sees what the API wrote.
    ran = api_call(alpha_api, "post", f"/workspaces/{running.pk}/exec", {"command": "python3 src/app.py"})
    assert ran.json()["stdout"] == "hi\n"

    assert api_call(alpha_api, "delete", f"{base}?path=src").status_code == 400  # a directory needs recursive
    assert api_call(alpha_api, "delete", f"{base}?path=src&recursive=true").status_code == 204
    missing = api_call(alpha_api, "get", f"{base}?path=src/app.py")
    assert missing.status_code == 404
    assert api_call(alpha_api, "delete", f"{base}?path=src").status_code == 404


def test_bad_base64_is_a_400_on_content(alpha_api: Client, running: Workspace) -> None:
    response = api_call(
        alpha_api,
        "put",
        f"/workspaces/{running.pk}/files?path=x",
        {"content": "not base64!", "encoding": "base64"},
    )
    assert response.status_code == 400
    assert "content" in error_of(response)["fields"]


def test_a_symlink_pointing_out_of_the_workspace_is_refused(alpha_api: Client, running: Workspace) -> None:
    made = api_call(
        alpha_api,
        "post",
        f"/workspaces/{running.pk}/exec",
        {"command": "ln -s /etc/passwd passwd-link && ln -s / root-link && ln -s .. up-link && echo made"},
    )
    assert made.json()["stdout"] == "made\n", made.content
    base = f"/workspaces/{running.pk}/files"
    for path in ("passwd-link", "root-link/etc/hostname", "up-link/x"):
        read = api_call(alpha_api, "get", f"{base}?path={path}")
        assert read.status_code == 400, (path, read.status_code, read.content)
        assert "path" in error_of(read)["fields"], path
        write = api_call(alpha_api, "put", f"{base}?path={path}", {"content": "owned"})
        assert write.status_code == 400, (path, write.content)
    # The host's file is untouched and was never shown.
    with open("/etc/passwd") as host_file:
        assert "owned" not in host_file.read()
