"""A git smart-HTTP server for the tests: Python's http.server running the real
`git http-backend` as a CGI program, requiring Basic authentication with one token
(any user name, as GitHub accepts `x-access-token:<token>`).

    with git_http_server(tmp_path / "repos", token="s3cret") as server:
        server.create_repository("project")   # a bare repository with one commit
        server.url("project")                 # http://127.0.0.2:<port>/project.git

It listens on 127.0.0.2: a loopback address that sandboxes' NO_PROXY does not name,
so a sandbox reaches it through the runtime's proxy and its allow-list, as it
would reach github.com (the runtime must allow private addresses for this)."""

import base64
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

HOST = "127.0.0.2"


@dataclass
class GitHttpServer:
    root: Path
    token: str
    port: int = 0
    # "user:password" of each request's Basic credentials, for the tests to inspect.
    seen_credentials: list[str] = field(default_factory=list)

    @property
    def allow_entry(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{name}.git"

    def create_repository(self, name: str, files: dict[str, str] | None = None) -> Path:
        """A bare repository `name`.git whose main branch holds `files` in one commit."""
        bare = self.root / f"{name}.git"
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "Fixture",
            "GIT_AUTHOR_EMAIL": "fixture@example.test",
            "GIT_COMMITTER_NAME": "Fixture",
            "GIT_COMMITTER_EMAIL": "fixture@example.test",
        }
        subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(bare)], check=True, env=env)
        subprocess.run(["git", "-C", str(bare), "config", "http.receivepack", "true"], check=True)
        with tempfile.TemporaryDirectory() as work:
            subprocess.run(["git", "init", "--quiet", "-b", "main", work], check=True, env=env)
            for path, content in (files or {"README.md": f"# {name}\n"}).items():
                target = Path(work, path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            subprocess.run(["git", "-C", work, "add", "--all"], check=True, env=env)
            subprocess.run(
                ["git", "-C", work, "commit", "--quiet", "-m", "First commit"], check=True, env=env
            )
            subprocess.run(["git", "-C", work, "push", "--quiet", str(bare), "main"], check=True, env=env)
        return bare

    def log(self, name: str, ref: str = "main") -> list[str]:
        """Subjects of `ref` in the bare repository, newest first."""
        result = subprocess.run(
            ["git", "-C", str(self.root / f"{name}.git"), "log", "--format=%s|%an|%ae", ref],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.splitlines()


def _handler(server_state: GitHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, message_format: str, *args: object) -> None:
            pass

        def _refuse(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return False
            try:
                credentials = base64.b64decode(header[6:]).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            server_state.seen_credentials.append(credentials)
            return credentials.partition(":")[2] == server_state.token

        def _cgi(self) -> None:
            if not self._authorized():
                self._refuse()
                return
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(server_state.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REMOTE_USER": "git",
                "REMOTE_ADDR": self.client_address[0],
                "REQUEST_METHOD": self.command,
                "PATH_INFO": parts.path,
                "QUERY_STRING": parts.query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            }
            result = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
            )
            head, _, payload = result.stdout.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = result.stdout.partition(b"\n\n")
            status = 200
            headers: list[tuple[str, str]] = []
            for line in head.decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _cgi
        do_POST = _cgi

    return Handler


@contextmanager
def git_http_server(root: Path, *, token: str) -> Iterator[GitHttpServer]:
    root.mkdir(parents=True, exist_ok=True)
    state = GitHttpServer(root=root, token=token)
    httpd = ThreadingHTTPServer((HOST, 0), _handler(state))
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True, name="git-http")
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
