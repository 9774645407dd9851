"""The one ``host:port`` parser (peercrypt.core.address): every address text
the CLI, config, members and actors read goes through it."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.address import dialled, join_host_port, same_host_port, split_host_port
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
