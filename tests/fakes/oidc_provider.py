"""A loopback identity provider that speaks the real protocols: OpenID Connect
(discovery, authorize, token, JWKS, userinfo), GitHub's OAuth 2 and API, and
Google's endpoints, all on one threaded HTTP server on 127.0.0.1.

Tests point the backends' URLs at it and drive the real social-auth code over
real HTTP. Knobs for the next login: `next_user` (the person and their claims),
`expire_next_code`, `sign_with_wrong_key`.
"""

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


@dataclass
class FakeUser:
    sub: str
    email: str
    name: str = "Fake Person"
    email_verified: bool = True
    github_login: str = "fake-person"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    user: FakeUser
    nonce: str | None
    scope: str
    expires_at: float


@dataclass
class FakeIdentityProvider:
    clients: dict[str, str] = field(default_factory=dict)  # client id -> secret
    next_user: FakeUser = field(default_factory=lambda: FakeUser(sub="u-1", email="person@example.test"))
    expire_next_code: bool = False
    sign_with_wrong_key: bool = False
    url: str = ""
    token_requests: int = 0

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._grants: dict[str, _Grant] = {}
        self._tokens: dict[str, FakeUser] = {}
        self._lock = threading.Lock()
        # Unique per provider: social-auth caches JWKS by URL, and ports get reused.
        self.key_id = f"fake-{secrets.token_hex(6)}"

    # --- protocol -----------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile"],
        }

    def jwks(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.key_id, "use": "sig", "alg": "RS256"}]}

    def authorize(self, query: dict[str, str]) -> str:
        """The redirect back to the client, with a code and the state it sent."""
        code = secrets.token_urlsafe(16)
        with self._lock:
            lifetime = -1.0 if self.expire_next_code else 60.0
            self.expire_next_code = False
            self._grants[code] = _Grant(
                client_id=query.get("client_id", ""),
                redirect_uri=query.get("redirect_uri", ""),
                user=self.next_user,
                nonce=query.get("nonce"),
                scope=query.get("scope", ""),
                expires_at=time.time() + lifetime,
            )
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        separator = "&" if "?" in query.get("redirect_uri", "") else "?"
        return query.get("redirect_uri", "") + separator + urlencode(params)

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        if authorization.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
        if not client_id or self.clients.get(client_id) != client_secret:
            return 401, {"error": "invalid_client", "error_description": "Client authentication failed."}
        with self._lock:
            grant = self._grants.pop(form.get("code", ""), None)
        if grant is None or grant.client_id != client_id:
            return 400, {"error": "invalid_grant", "error_description": "Unknown or used code."}
        if grant.expires_at < time.time():
            return 400, {"error": "invalid_grant", "error_description": "The authorization code has expired."}
        if form.get("redirect_uri") and form["redirect_uri"] != grant.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri does not match."}
        access_token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[access_token] = grant.user
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": grant.scope,
        }
        if "openid" in grant.scope.replace(",", " ").split():
            body["id_token"] = self.id_token(grant, client_id)
        return 200, body

    def id_token(self, grant: _Grant, client_id: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": grant.user.sub,
            "aud": client_id,
            "iat": now,
            "exp": now + 300,
            "email": grant.user.email,
            "email_verified": grant.user.email_verified,
            "name": grant.user.name,
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        key = self.wrong_key if self.sign_with_wrong_key else self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.key_id})

    def user_for(self, authorization: str) -> FakeUser | None:
        _, _, token = authorization.partition(" ")
        return self._tokens.get(token)

    # --- serving --------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator["FakeIdentityProvider"]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True, name="fake-idp")
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


def _handler_for(provider: FakeIdentityProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class names it)
            return

        def _send_json(self, status: int, body: Any) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _query(self) -> dict[str, str]:
            return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            if self.headers.get("Content-Type", "").startswith("application/json"):
                return {k: str(v) for k, v in json.loads(raw or "{}").items()}
            return {k: v[0] for k, v in parse_qs(raw).items()}

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            authorization = self.headers.get("Authorization", "")
            if path == "/.well-known/openid-configuration":
                self._send_json(200, provider.discovery())
            elif path == "/jwks":
                self._send_json(200, provider.jwks())
            elif path in {"/authorize", "/login/oauth/authorize", "/o/oauth2/auth"}:
                self.send_response(302)
                self.send_header("Location", provider.authorize(self._query()))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/userinfo":
                self._userinfo(provider.user_for(authorization))
            elif path == "/user":
                user = provider.user_for(authorization)
                if user is None:
                    self._send_json(401, {"message": "Bad credentials"})
                else:
                    self._send_json(
                        200,
                        {
                            "id": int(user.sub.split("-")[-1]),
                            "login": user.github_login,
                            "name": user.name,
                            "email": None,
                        },
                    )
            elif path == "/user/emails":
                user = provider.user_for(authorization)
                if user is None:
                    self._send_json(401, {"message": "Bad credentials"})
                else:
                    self._send_json(
                        200,
                        [
                            {"email": user.email, "primary": True, "verified": user.email_verified},
                            {
                                "email": f"{user.github_login}@users.noreply.example",
                                "primary": False,
                                "verified": True,
                            },
                        ],
                    )
            else:
                self._send_json(404, {"error": "not_found"})

        def _userinfo(self, user: FakeUser | None) -> None:
            if user is None:
                self._send_json(401, {"error": "invalid_token"})
                return
            self._send_json(
                200,
                {
                    "sub": user.sub,
                    "email": user.email,
                    "email_verified": user.email_verified,
                    "name": user.name,
                },
            )

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path in {"/token", "/login/oauth/access_token"}:
                status, body = provider.token(self._form(), self.headers.get("Authorization", ""))
                self._send_json(status, body)
            else:
                self._send_json(404, {"error": "not_found"})

    return Handler
