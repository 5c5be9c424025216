"""The HTTP(S) proxy through which a sandbox with an allow-list reaches the network.

A sandbox never gets a route out of its network namespace. When its policy lists
host:port pairs, sandboxd listens on 127.0.0.1:3128 inside the namespace and hands
the listening socket to the runtime, whose event loop serves this proxy on it;
the sandbox's environment points HTTP_PROXY/HTTPS_PROXY/ALL_PROXY (and the lower
case ones) at it, which curl, git, pip and most HTTP clients follow.

Supported: CONNECT host:port (https, or any TLS/TCP protocol a client tunnels) and
plain HTTP with an absolute URI (forwarded with Connection: close). The proxy
connects only when (host, port) is in the allow-list exactly, resolves the name
itself and connects to the address it checked (no DNS rebinding between check and
connect), and refuses loopback, private, link-local and other non-global
addresses unless RUNTIME_ALLOW_PRIVATE_NETWORK=1. Anything refused gets a 403
whose body says why, so a person reading curl's output knows what to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from runtime.netpolicy import (
    format_allow_entry,
    is_public_address,
    parse_allow_entry,
    private_network_allowed,
)

logger = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024
CONNECT_TIMEOUT = 10.0
HEAD_TIMEOUT = 30.0
# Each connection costs the runtime two sockets; a sandbox gets this many at once.
MAX_CONNECTIONS = 256
_HOP_HEADERS = {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"}


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class ProxyServer:
    """Serves one sandbox's proxy on a listening socket handed over by sandboxd."""

    def __init__(self, allow: Iterable[str], *, label: str = "", allow_private: bool | None = None) -> None:
        self.allow = {parse_allow_entry(entry) for entry in allow}
        self.label = label
        self.allow_private = private_network_allowed() if allow_private is None else allow_private
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def serve(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._server = await asyncio.start_server(self._handle, sock=listener, limit=HEAD_LIMIT)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS:
            await _reply(writer, 503, "Service Unavailable", "agentyard proxy: too many open connections\n")
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _reply(writer, 431, "Request Header Fields Too Large", "the request head is too large\n")
            return
        request_line, _, header_block = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            await _reply(writer, 400, "Bad Request", "not an HTTP/1.x proxy request\n")
            return
        method, target, version = (part.decode("latin-1") for part in parts)
        try:
            if method == "CONNECT":
                host, port = self._target_of_connect(target)
                upstream_reader, upstream_writer = await self._open(host, port)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                host, port, path = self._target_of_uri(target)
                upstream_reader, upstream_writer = await self._open(host, port)
                upstream_writer.write(_rewrite_head(method, path, version, header_block))
        except Refused as refused:
            logger.info("proxy %s: refused %s %s: %s", self.label, method, target, refused.message)
            await _reply(writer, refused.status, refused.reason, f"agentyard proxy: {refused.message}\n")
            return
        logger.info("proxy %s: %s %s", self.label, method, format_allow_entry(host, port))
        try:
            await _relay(reader, writer, upstream_reader, upstream_writer)
        finally:
            upstream_writer.close()

    def _target_of_connect(self, target: str) -> tuple[str, int]:
        try:
            return self._check(*parse_allow_entry(target))
        except ValueError as error:
            raise Refused(400, "Bad Request", str(error)) from None

    def _target_of_uri(self, target: str) -> tuple[str, int, str]:
        try:
            url = urlsplit(target)
            hostname = url.hostname
        except ValueError:
            raise Refused(400, "Bad Request", f"not a URL: {target!r}") from None
        if url.scheme != "http" or not hostname:
            raise Refused(
                400, "Bad Request", "only absolute http:// URIs and CONNECT (for https) go through this proxy"
            )
        try:
            port = url.port or 80
        except ValueError:
            raise Refused(400, "Bad Request", f"bad port in {target!r}") from None
        authority = format_allow_entry(hostname, port)
        try:
            host, port = self._check(*parse_allow_entry(authority))
        except ValueError as error:
            raise Refused(400, "Bad Request", str(error)) from None
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        return host, port, path

    def _check(self, host: str, port: int) -> tuple[str, int]:
        if (host, port) not in self.allow:
            raise Refused(
                403,
                "Forbidden",
                f"{format_allow_entry(host, port)} is not in this workspace's network allow-list",
            )
        return host, port

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as error:
            raise Refused(502, "Bad Gateway", f"cannot resolve {host}: {error}") from None
        addresses = [str(info[4][0]) for info in infos]
        if not self.allow_private:
            blocked = [address for address in addresses if not is_public_address(address)]
            if blocked:
                raise Refused(
                    403,
                    "Forbidden",
                    f"{host} resolves to a non-public address ({blocked[0]}), where the proxy never connects",
                )
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as error:
                last_error = error
        raise Refused(502, "Bad Gateway", f"cannot connect to {format_allow_entry(host, port)}: {last_error}")


def _rewrite_head(method: str, path: str, version: str, header_block: bytes) -> bytes:
    lines = [f"{method} {path} {version}".encode("latin-1")]
    for line in header_block.split(b"\r\n"):
        if not line:
            continue
        name = line.split(b":", 1)[0].strip().lower()
        if name not in _HOP_HEADERS:
            lines.append(line)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _reply(writer: asyncio.StreamWriter, status: int, reason: str, body: str) -> None:
    data = body.encode()
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
