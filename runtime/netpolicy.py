"""A sandbox's network policy: which host:port pairs it may reach.

Policy "none" (an empty allow-list) leaves a sandbox with nothing but its own
loopback interface: it lives in a fresh network namespace with no route out.
With entries it still has no route out; its only way out is the HTTP(S) proxy
inside it on 127.0.0.1:3128 (runtime/netproxy.py), which connects only to the
listed host:port pairs, and never to loopback, private or link-local addresses
(unless the runtime host sets RUNTIME_ALLOW_PRIVATE_NETWORK=1, for tests and
development against local servers).

Entries are exact: "github.com:443" allows github.com on port 443 and nothing
else (no subdomains, no wildcards, no port ranges), so a reader of the policy
knows precisely where a workspace can connect.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")
EXAMPLE = "e.g. github.com:443 or 203.0.113.7:8080"


def parse_allow_entry(entry: str) -> tuple[str, int]:
    """("host", port) from "host:port"; ValueError with a message a person can act on.

    host is a DNS name or an IP address (IPv6 in brackets: "[2001:db8::1]:443");
    names are lower-cased and lose a trailing dot."""
    text = entry.strip() if isinstance(entry, str) else ""
    if not text:
        raise ValueError(f"an allow-list entry cannot be empty; write host:port, {EXAMPLE}")
    if len(text) > 300:
        raise ValueError("an allow-list entry is at most 300 characters")
    if "*" in text:
        raise ValueError(f"{text!r}: wildcards are not supported; list each host:port, {EXAMPLE}")
    if "://" in text or "/" in text:
        raise ValueError(f"{text!r}: write host:port without a scheme or path, {EXAMPLE}")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: an IPv6 address is written [address]:port")
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
        host = str(address)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: a port is required; write host:port, {EXAMPLE}")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [2001:db8::1]:443")
        host = host.lower().removesuffix(".")
        if not _is_ipv4(host) and not _is_dns_name(host):
            raise ValueError(f"{text!r}: {host!r} is not a valid host name or IP address")
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def normalize_allow_list(entries: Iterable[str]) -> list[str]:
    """The entries in canonical form ("host:port"), without duplicates, in order."""
    seen: dict[str, None] = {}
    for entry in entries:
        seen[format_allow_entry(*parse_allow_entry(entry))] = None
    return list(seen)


def format_allow_entry(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_dns_name(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.split(".")
    # "1.2.3" or "999.1.1.1" look like addresses, not names: refuse them rather than guess.
    if labels[-1].isdigit():
        return False
    return all(_LABEL.fullmatch(label) for label in labels)


def private_network_allowed() -> bool:
    return os.environ.get("RUNTIME_ALLOW_PRIVATE_NETWORK", "") == "1"


def is_public_address(address: str) -> bool:
    """Whether the proxy may connect to this IP address: globally routable unicast only."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
