"""The one ``host:port`` parser (peercrypt.core.address): every address text
the CLI, config, members and actors read goes through it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.address import (
    dialable_host,
    dialled,
    join_host_port,
    same_host_port,
    split_host_port,
)
from peercrypt.core.fragments import parse_group
from peercrypt.core.membership import _check_endpoint

hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.integers(1, 65535)


@given(hosts, ports)
def test_join_then_split_round_trips(host: str, port: int) -> None:
    text = join_host_port(host, port)
    assert split_host_port(text) == (host, port)
    assert split_host_port(f"tcp://{text}", scheme="tcp") == (host, port)
    assert same_host_port(f"tcp://{text}", host, port)
    assert not same_host_port(text, host, port % 65535 + 1)
    if ":" in host:
        # an IPv6 host is bracketed, so the port is never read from the host
        assert text.startswith("[") and text.endswith(f"]:{port}")


@given(st.text(max_size=40))
def test_any_text_is_a_valid_address_or_a_value_error(text: str) -> None:
    try:
        host, port = split_host_port(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
        return
    assert host and "[" not in host and "]" not in host
    assert 1 <= port <= 65535
    assert split_host_port(join_host_port(host, port)) == (host, port)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "host",
        "host:",
        ":80",
        "[]:80",
        "host:0",
        "host:65536",
        "host:-1",
        "host:8o",
        "host:\u00b2",
        "host:\u0663",
        "host: 80x",
    ],
)
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected HOST:PORT|port must be 1-65535"):
        split_host_port(text)


def test_the_scheme_is_required_when_named() -> None:
    with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
        split_host_port("127.0.0.1:80", scheme="tcp")
    assert split_host_port(" [::1]:7400 ") == ("::1", 7400)


def test_loopback_names_are_the_same_host() -> None:
    assert same_host_port("tcp://127.0.0.1:7400", "localhost", 7400)
    assert same_host_port("tcp://[::1]:7400", "127.0.0.1", 7400)
    assert not same_host_port("tcp://127.0.0.1:7400", "127.0.0.1", 7401)
    assert not same_host_port("tcp://10.0.0.1:7400", "10.0.0.2", 7400)
    assert not same_host_port("tcp://10.0.0.1", "10.0.0.1", 7400)


@given(st.ip_addresses(v=4), ports)
def test_multicast_groups_use_the_same_parser(addr: ipaddress.IPv4Address, port: int) -> None:
    text = join_host_port(str(addr), port)
    if addr.is_multicast:
        assert parse_group(text) == (str(addr), port)
    else:
        with pytest.raises(ValueError, match="not a multicast address"):
            parse_group(text)


@given(hosts, st.integers(-5, 70000))
def test_member_endpoints_use_the_same_parser(host: str, port: int) -> None:
    url = f"tcp://{join_host_port(host, port)}"
    if 1 <= port <= 65535:
        _check_endpoint("public", url)
    else:
        with pytest.raises(ValueError, match="1 <= port <= 65535"):
            _check_endpoint("public", url)


@pytest.mark.parametrize("host", [
    "localhost", "LOCALHOST.", "127.0.0.1", "127.1", "0x7f.0.0.1", "2130706433",
    "::1", "0::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", " 127.0.0.1 ", "127.1.",
])  # fmt: skip
def test_every_spelling_of_the_loopback_is_one_receiver(host: str) -> None:
    """The same-file checks key receivers so: a second send of a running
    file under another spelling of its receiver stored a second copy."""
    assert dialled(host, 7400) == dialled("127.0.0.1", 7400) == "127.0.0.1:7400"


@given(st.ip_addresses(v=4).map(str), ports)
def test_an_ipv4_address_mapped_into_ipv6_is_the_address(ip: str, port: int) -> None:
    assert dialled(f"::ffff:{ip}", port) == dialled(ip, port)


def test_other_hosts_keep_one_spelling_each() -> None:
    assert dialled("Example.COM", 80) == "example.com:80"
    assert dialled("fe80:0::1", 80) == dialled("FE80::1", 80) == "[fe80::1]:80"
    assert dialled("10.0.0.5", 80) != dialled("10.0.0.6", 80)


@pytest.fixture(scope="module")
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def connects(ctx: zmq.Context[Any], host: str) -> bool:
    """Whether libzmq's connect takes ``tcp://HOST:7400`` (as the sender
    dials a receiver's data host) without raising."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(f"tcp://{join_host_port(host, 7400)}")
    except zmq.ZMQError:
        return False
    finally:
        sock.close(0)
    return True


def libzmq_syntax(host: str) -> bool:
    """libzmq 4.3's own check of a tcp address in connect (src/socket_base.cpp):
    it starts with a letter, a digit, ``[`` or ``:`` and holds only those,
    ``.-%;]_*``; anything else raises EINVAL. (A name is looked up only
    later, so a name is checked here against this, not by a connect: a
    test does no DNS lookups.)"""
    text = join_host_port(host, 7400)
    rest = set(".-%;[]_*:")
    return (
        text.isascii()
        and (text[0].isalnum() or text[0] in "[:")
        and all(c.isalnum() or c in rest for c in text)
    )


def literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("host", [
    "127.0.0.1", "10.0.0.5", "::1", "[::1]", "fe80::1%eth0", "[fe80::1%2]", "2001:db8::7",
    "localhost", "localhost.", "node-1.example.org", "a_b.lan", "x" * 63 + ".example",
])  # fmt: skip
def test_hosts_a_receiver_may_name_for_its_data_are_dialable(
    context: zmq.Context[Any], host: str
) -> None:
    assert dialable_host(host) and libzmq_syntax(host)
    assert connects(context, host) or not literal(host)


@pytest.mark.parametrize("host", [
    "", "a b", "x!y", "\u00e9", "-", "/etc", "1.2.3.4;5.6.7.8", "*", "a*", "::1%a b",
    "[example.org]", "[10.0.0.1]", "a..b", ".", "a-", "_a", "a\x1b[2J", "tcp://x", "x:7400",
    "x" * 64 + ".example", ".".join(["abc"] * 64),
])  # fmt: skip
def test_hosts_a_receiver_may_not_name_for_its_data(host: str) -> None:
    """The first ones made a sender's connect raise in the middle of an
    accept; the others dial something else than one host (a source address
    before the ``;``), or are no host names."""
    assert not dialable_host(host)


tricky = st.text(st.sampled_from("aZ09.-_:%[];*!/ \u00e9\x1b"), max_size=24)


@given(st.one_of(tricky, st.text(max_size=24), hosts))
def test_every_dialable_host_is_taken_by_libzmq(context: zmq.Context[Any], host: str) -> None:
    if dialable_host(host):
        assert libzmq_syntax(host), host
        assert connects(context, host) or not literal(host), host
    if not libzmq_syntax(host):  # (the model of libzmq's check agrees with it)
        assert not connects(context, host), host


@given(st.one_of(ipv4, ipv6))
def test_every_ip_address_is_dialable(host: str) -> None:
    assert dialable_host(host) and dialable_host(f"[{host}]") == (":" in host)
