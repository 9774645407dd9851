"""The one ``host:port`` parser.

Every address a user, a config file or a peer gives as text goes through
:func:`split_host_port`; every address the node writes as text comes from
:func:`join_host_port`, so the two always round-trip.

Accepted forms: ``HOST:PORT``, ``[V6]:PORT`` (brackets dropped from the
returned host) and, for member endpoints, ``tcp://HOST:PORT``.  ``PORT`` is
ASCII decimal in 1..65535.  Anything else raises ``ValueError`` with a
message naming the text, so callers can pass it on as the user's one line.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re


def visible_ascii(text: str) -> bool:
    """Is ``text`` non-empty printable ASCII without a blank? (What a host,
    a port's text or an endpoint may hold: it is shown to users, and a
    control character would reach their terminals.)"""
    return bool(text) and text.isascii() and text.isprintable() and " " not in text


# A DNS label: letters, digits, hyphens and underscores, a letter or digit at
# each end; an IPv6 address's scope (an interface's name or number).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?")
_SCOPE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def dialable_host(host: str) -> bool:
    """Is ``host`` an IP address (IPv6 with or without brackets, with or
    without a scope of letters, digits and ``_.-``) or a DNS name (labels of
    :data:`_LABEL` joined by dots, a final dot allowed, at most 253
    characters)? What a peer may name for this node to dial: libzmq's
    connect raises on much else, and reads more into some (a source
    address before a ``;``, a wildcard ``*``)."""
    if not visible_ascii(host):
        return False
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        if bracketed:
            return False
        name = host.removesuffix(".")
        return len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))
    if isinstance(ip, ipaddress.IPv4Address):
        return not bracketed
    return ip.scope_id is None or bool(_SCOPE.fullmatch(ip.scope_id))


def split_host_port(text: str, *, scheme: str = "") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[V6]:PORT``; ``SCHEME://`` first when ``scheme``
    is given) -> ``(host, port)``, host without brackets or surrounding
    whitespace.  Raises ``ValueError`` if the text has no host, no port, a
    port that is not ASCII decimal, or a port outside 1..65535."""
    body = text.strip()
    if scheme:
        prefix = f"{scheme}://"
        if not body.startswith(prefix):
            raise ValueError(f"expected {prefix}HOST:PORT, got {text!r}")
        body = body[len(prefix) :]
    host, sep, port = body.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"port must be 1-65535, got {text!r}")
    return host, number


def join_host_port(host: str, port: int) -> str:
    """``(host, port)`` -> ``HOST:PORT``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def is_ipv6(host: str) -> bool:
    """Is ``host`` (brackets or not) an IPv6 address? A libzmq socket binds
    or dials one only with its ``IPV6`` option set; that option is not set
    for every socket, since it makes libzmq resolve a name to its IPv6
    address first (``localhost`` would dial ``::1``, where a node on
    ``127.0.0.1`` does not listen)."""
    return ":" in host


def url_is_ipv6(url: str) -> bool:
    """Does ``tcp://HOST:PORT`` name an IPv6 host (``tcp://[::1]:7400``)?"""
    return url.startswith("tcp://[")


def same_host_port(text: str, host: str, port: int) -> bool:
    """Does ``text`` (``HOST:PORT`` or ``tcp://HOST:PORT``) name HOST:PORT?
    Loopback names (``localhost``, ``::1``) equal ``127.0.0.1``; text that
    does not parse names nothing."""
    try:
        left = split_host_port(text.removeprefix("tcp://"))
    except ValueError:
        return False
    return left[1] == port and canonical_host(left[0]) == canonical_host(host)


def canonical_host(host: str) -> str:
    """One spelling per host: lower case, no brackets, loopback names as
    ``127.0.0.1``."""
    h = host.strip().strip("[]").lower()
    return "127.0.0.1" if h in ("localhost", "::1") else h


def dialled(host: str, port: int) -> str:
    """The :func:`endpoint_key` of ``host`` and ``port`` with its address
    in one form (an IPv4 address mapped into IPv6 as itself) and then
    ``localhost`` and the IPv6 loopback, however written (``[0::1]``),
    folded into ``127.0.0.1``: one key per receiver, however a user spells
    it (a name other than ``localhost`` is not resolved)."""
    name = host.strip()
    name = name[:-1] if name.endswith(".") and not name.endswith("..") else name  # `localhost.`
    key_host, key_port = split_host_port(endpoint_key(f"tcp://{join_host_port(name, port)}"))
    h = peer_address(key_host)
    return join_host_port(canonical_host(h), key_port)


def dialled_target(text: str) -> str:
    """:func:`dialled` of ``HOST:PORT`` text (``[v6]:PORT`` too): one key for
    every spelling of a target. Raises ValueError for other text."""
    return dialled(*split_host_port(text))


def endpoint_key(url: str) -> str:
    """``HOST:PORT`` of ``tcp://HOST:PORT`` in one spelling that dials the
    same endpoint (the port without leading zeros, an IP address in its one
    form: ``127.1``, ``0x7f.0.0.1`` and ``2130706433`` are ``127.0.0.1``, as
    the C resolver reads them; a name in lower case, as DNS does); the text
    itself if it does not parse. Dial ``tcp://`` + the key, not the text it
    came from: every spelling it folds dials alike."""
    try:
        host, port = split_host_port(url.removeprefix("tcp://"))
    except ValueError:
        return url
    h = host.strip().lower()
    try:
        h = str(ipaddress.ip_address(h))
    except ValueError:
        if h and all(c in "0123456789abcdefx." for c in h) and not h.endswith("."):
            import socket

            with contextlib.suppress(OSError):
                h = socket.inet_ntoa(socket.inet_aton(h))
    return join_host_port(h, port)


@functools.lru_cache(maxsize=1024)
def peer_address(text: str) -> str:
    """One spelling per IP address, whether libzmq (a message's
    ``Peer-Address``) or the kernel (``getpeername``) gave it: an IPv4
    address mapped into IPv6 as the IPv4 address, IPv6 compressed; text
    that is no IP address as it is. Cached: it is asked for every message
    a guarded port takes (core/port_guard.py)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed
