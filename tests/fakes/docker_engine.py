"""A loopback Docker Engine speaking the real Engine HTTP API, for the parts the runtime's
docker backend uses to manage containers: /_ping, /version, containers create, inspect,
start, stop and remove, and networks list, create and remove (any /vX.YZ prefix).

Tests point DOCKER_HOST at it (tcp://127.0.0.1:<port>) and read back exactly what the
real docker SDK sent: `containers[name].body` is the JSON body of the create request.
Exec and attach are not implemented: they answer 501, so nothing pretends to run.
"""

import json
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_VERSION = "1.45"


@dataclass
class FakeContainer:
    id: str
    name: str
    body: dict[str, Any]
    running: bool = False


@dataclass
class FakeNetwork:
    id: str
    name: str
    body: dict[str, Any]


@dataclass
class FakeDockerEngine:
    url: str = ""
    images: set[str] = field(default_factory=lambda: {"agentyard/workspace:latest"})
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    networks: dict[str, FakeNetwork] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def find(self, ref: str) -> FakeContainer | None:
        for container in self.containers.values():
            if ref in (container.id, container.name, container.id[:12]):
                return container
        return None

    # -- the API ----------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        path = re.sub(r"^/v\d+\.\d+", "", path)
        with self.lock:
            self.requests.append((method, path))
            if path == "/_ping":
                return 200, "OK"
            if path == "/version":
                return 200, {"Version": "27.0.0-fake", "ApiVersion": API_VERSION, "MinAPIVersion": "1.24"}
            if method == "POST" and path == "/containers/create":
                return self._create(query.get("name", [""])[0], body)
            if match := re.fullmatch(r"/containers/([^/]+)(/json|/start|/stop|/kill|/wait)?", path):
                return self._container(method, match.group(1), match.group(2) or "")
            if method == "GET" and path == "/networks":
                return 200, self._networks(query)
            if method == "POST" and path == "/networks/create":
                network = FakeNetwork(secrets.token_hex(32), body["Name"], body)
                self.networks[network.id] = network
                return 201, {"Id": network.id, "Warning": ""}
            if match := re.fullmatch(r"/networks/([^/]+)", path):
                found = self.networks.get(match.group(1)) or next(
                    (item for item in self.networks.values() if item.name == match.group(1)), None
                )
                if found is None:
                    return 404, {"message": f"network {match.group(1)} not found"}
                if method == "DELETE":
                    del self.networks[found.id]
                    return 204, None
                return 200, self._network_json(found)
            return 501, {"message": f"the fake engine does not implement {method} {path}"}

    def _create(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("Image") not in self.images:
            return 404, {"message": f"No such image: {body.get('Image')}"}
        if self.find(name) is not None:
            return 409, {"message": f'Conflict. The container name "/{name}" is already in use'}
        container = FakeContainer(secrets.token_hex(32), name, body)
        self.containers[container.id] = container
        return 201, {"Id": container.id, "Warnings": []}

    def _container(self, method: str, ref: str, action: str) -> tuple[int, Any]:
        container = self.find(ref)
        if container is None:
            return 404, {"message": f"No such container: {ref}"}
        if method == "DELETE":
            if container.running and not self._force:
                return 409, {"message": "You cannot remove a running container"}
            del self.containers[container.id]
            self.removed.append(container.name)
            return 204, None
        if action == "/start":
            container.running = True
            return 204, None
        if action in ("/stop", "/kill"):
            container.running = False
            return 204, None
        if action == "/wait":
            return 200, {"StatusCode": 0}
        return 200, {
            "Id": container.id,
            "Name": f"/{container.name}",
            "State": {"Running": container.running, "Status": "running" if container.running else "created"},
            "Config": {**container.body, "Image": container.body.get("Image")},
            "HostConfig": container.body.get("HostConfig", {}),
        }

    def _networks(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        filters = json.loads(query.get("filters", ["{}"])[0] or "{}")
        names = filters.get("name") or []
        if isinstance(names, dict):
            names = list(names)
        return [
            self._network_json(item) for item in self.networks.values() if not names or item.name in names
        ]

    def _network_json(self, network: FakeNetwork) -> dict[str, Any]:
        return {
            "Id": network.id,
            "Name": network.name,
            "Internal": network.body.get("Internal", False),
            "Driver": network.body.get("Driver", "bridge"),
            "Labels": network.body.get("Labels") or {},
        }

    _force = True  # the backend always removes with force=True


class _Handler(BaseHTTPRequestHandler):
    engine: FakeDockerEngine
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        status, reply = self.engine.handle(self.command, url.path, parse_qs(url.query), body)
        payload = (
            b""
            if reply is None
            else (reply.encode() if isinstance(reply, str) else json.dumps(reply).encode())
        )
        self.send_response(status)
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Content-Type", "text/plain" if isinstance(reply, str) else "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_HEAD = _serve


@contextmanager
def fake_docker_engine() -> Iterator[FakeDockerEngine]:
    engine = FakeDockerEngine()
    handler = type("Handler", (_Handler,), {"engine": engine})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    engine.url = f"tcp://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        server.shutdown()
        server.server_close()
