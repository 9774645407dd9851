"""``node`` (run a node in the foreground), ``status`` and ``keygen``."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from peercrypt import errors
from peercrypt.cli import modes
from peercrypt.cli.common import (
    UserError,
    allow_list,
    load_identity,
    network_key_option,
    open_option,
    server_keys,
    start_node,
    wait_for_facts,
)
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.fragments import (
    DEFAULT_FRAGMENT,
    HEADER_BYTES,
    MAX_DATAGRAM,
    MIN_FRAGMENT,
    parse_group,
)
from peercrypt.crypto.identity import fingerprint, new_network_key
from peercrypt.settings import (
    ATTACHABLE_KINDS,
    DEFAULT_PORT,
    NodeSettings,
    default_modes,
    private_modes,
)


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="The node's public port (0: any free port).",
)
@click.option(
    "--data-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the data plane (0: any free port; advertised to senders).",
)
@click.option(
    "--advertise-data-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Data port to advertise instead of the bound one (NAT, proxies).",
)
@click.option(
    "--inbox", type=click.Path(file_okay=False, path_type=Path), help="Where received files go."
)
@network_key_option
@open_option
@click.option("--allow", multiple=True, metavar="FINGERPRINT", help="Admit only these nodes.")
# Actors attached across hosts (docs/architecture.md, "Attached actors").
@click.option(
    "--remote-actor",
    "remote_actors",
    multiple=True,
    type=click.Choice(sorted(ATTACHABLE_KINDS)),
    help="Do not run this actor here: a `peercrypt actor NAME --attach` process runs it.",
)
@click.option(
    "--attach-allow",
    multiple=True,
    metavar="FINGERPRINT",
    help="Identities allowed to attach as this node's remote actors.",
)
@modes.node_policy_options
# Discovery and health monitoring (docs/membership.md).
@click.option("--bootstrap-host", metavar="HOST", help="Join the network through this member.")
@click.option("--bootstrap-port", type=click.IntRange(1, 65535), metavar="PORT")
@click.option(
    "--advertise-host",
    default="",
    help="Address members should use for this node (default: --host; for 0.0.0.0 the "
    "address of the interface that routes to the bootstrap member).",
)
@click.option(
    "--gossip-interval",
    type=click.FloatRange(0.01, 3600),
    default=5.0,
    show_default=True,
    envvar="GOSSIP_INTERVAL",
    help="Seconds between gossip rounds (env GOSSIP_INTERVAL).",
)
@click.option(
    "--no-gossip", is_flag=True, envvar="DISABLE_GOSSIP", help="Start with gossip disabled."
)
@click.option(
    "--health-check-interval",
    type=click.FloatRange(0.01, 3600),
    default=10.0,
    show_default=True,
    envvar="HEALTH_CHECK_INTERVAL",
    help="Seconds between health checks of every member (env HEALTH_CHECK_INTERVAL).",
)
@click.option(
    "--max-retries",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    envvar="MAX_RETRIES",
    help="Retries of a network operation (env MAX_RETRIES).",
)
@click.option(
    "--timeout",
    "connect_timeout",
    type=click.FloatRange(0.05, 600),
    default=3.0,
    show_default=True,
    envvar="CONNECTION_TIMEOUT",
    help="Seconds one attempt waits for a peer (env CONNECTION_TIMEOUT).",
)
@click.option(
    "--window",
    type=click.IntRange(1, 4096),
    default=16,
    show_default=True,
    help="Chunks in flight per incoming transfer.",
)
# UDP/IP multicast transport (docs/multicast.md, "Transports").
@click.option(
    "--multicast-group",
    default="",
    envvar="MULTICAST_GROUP",
    metavar="GROUP:PORT",
    help="Send multicast sessions as UDP datagrams to this IPv4 multicast group "
    "(e.g. 239.255.80.67:7480; env MULTICAST_GROUP) instead of over PUB/SUB.",
)
@click.option(
    "--multicast-ttl",
    type=click.IntRange(0, 255),
    default=1,
    show_default=True,
    help="Router hops multicast datagrams may cross (1: this link only).",
)
@click.option(
    "--multicast-datagram",
    type=click.IntRange(MIN_FRAGMENT + HEADER_BYTES, MAX_DATAGRAM),
    default=DEFAULT_FRAGMENT + HEADER_BYTES,
    show_default=True,
    help="Bytes per multicast datagram (the IP layer fragments what exceeds the "
    "link's MTU; 1472 avoids that on a 1500-byte link, at more CPU per byte).",
)
# The statistics history (docs/statistics.md).
@click.option(
    "--stats-keep-days",
    type=click.FloatRange(0),
    default=90.0,
    show_default=True,
    help="Forget recorded transfers older than this (0: never).",
)
@click.option(
    "--stats-max-transfers",
    type=click.IntRange(0),
    default=10_000,
    show_default=True,
    help="Keep at most this many recorded transfers, the newest (0: no limit).",
)
@click.option("--no-stats", is_flag=True, help="Record no statistics history.")
@click.pass_obj
def node(
    obj: dict[str, Any],
    /,
    host: str,
    port: int,
    data_port: int,
    advertise_data_port: int,
    inbox: Path | None,
    network_key: str | None,
    open_network: bool,
    allow: tuple[str, ...],
    remote_actors: tuple[str, ...],
    attach_allow: tuple[str, ...],
    window: int,
    bootstrap_host: str | None,
    bootstrap_port: int | None,
    advertise_host: str,
    gossip_interval: float,
    no_gossip: bool,
    health_check_interval: float,
    max_retries: int,
    connect_timeout: float,
    multicast_group: str,
    multicast_ttl: int,
    multicast_datagram: int,
    stats_keep_days: float,
    stats_max_transfers: int,
    no_stats: bool,
    **policy_options: Any,
) -> None:
    """Run a node in the foreground until SIGINT/SIGTERM."""
    if (bootstrap_host is None) != (bootstrap_port is None):
        raise UserError("--bootstrap-host and --bootstrap-port go together")
    if multicast_group:
        try:
            group, group_port = parse_group(multicast_group)
        except ValueError as exc:
            raise UserError(f"--multicast-group: {exc}", errors.USAGE) from None
        multicast_group = f"{group}:{group_port}"
    policy, max_rate = modes.node_policy(policy_options)
    logging.getLogger("peercrypt").setLevel(logging.DEBUG if obj["debug"] else logging.INFO)
    data_dir: Path = obj["data_dir"]
    # Received files: what the umask allows, owner-only in an inbox the user named.
    file_mode, inbox_mode = private_modes() if inbox is not None else default_modes()
    settings = NodeSettings(
        data_dir=data_dir,
        inbox=(inbox or data_dir / "inbox").expanduser(),
        file_mode=file_mode,
        inbox_mode=inbox_mode,
        identity=load_identity(data_dir),
        server_keys=server_keys(network_key, open_network),
        open_network=open_network,
        allow=allow_list(allow),
        host=host,
        port=port,
        data_port=data_port,
        advertise_data_port=advertise_data_port,
        window=window,
        policy=policy,
        max_rate=max_rate,
        bootstrap=((bootstrap_host, bootstrap_port),) if bootstrap_host and bootstrap_port else (),
        advertise_host=advertise_host,
        gossip_enabled=not no_gossip,
        gossip_interval=gossip_interval,
        health_interval=health_check_interval,
        max_retries=max_retries,
        connect_timeout=connect_timeout,
        multicast_group=multicast_group,
        multicast_ttl=multicast_ttl,
        multicast_fragment=multicast_datagram - HEADER_BYTES,
        remote_actors=tuple(dict.fromkeys(remote_actors)),
        attach_allow=allow_list(attach_allow),
        stats_enabled=not no_stats,
        stats_keep_days=stats_keep_days,
        stats_max_transfers=stats_max_transfers,
    )
    with contextlib.suppress(NodeUnavailable), ControlClient.for_data_dir(data_dir) as client:
        client.status(timeout=1.0)
        raise UserError(f"a node is already running for {data_dir}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from peercrypt.node import Node  # the actors: only the node command needs them

    running = start_node(Node(settings), f"{host}:{port}")
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            facts = wait_for_facts(client, ("port", "data_port"))
        click.echo(
            f"peercrypt node {fingerprint(settings.identity.public)} listening on "
            f"{host}:{facts.get('port')} (data port {facts.get('data_port')}), "
            f"inbox {settings.inbox}",
            err=True,
        )
        running.run_until(stop)
    finally:
        running.stop()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print status as JSON.")
@click.pass_obj
def status(obj: dict[str, Any], as_json: bool) -> None:
    """Show this node's identity, endpoints and counters (exit 1: not running)."""
    data_dir: Path = obj["data_dir"]
    fp = fingerprint(load_identity(data_dir).public)
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            reply = client.status()
    except NodeUnavailable as exc:
        if as_json:
            click.echo(json.dumps({"running": False, "fingerprint": fp, "reason": str(exc)}))
        else:
            click.echo(f"fingerprint {fp}\nnode: not running ({exc})")
        sys.exit(errors.FAILED)
    if as_json:
        click.echo(json.dumps({"running": True, **reply.node, "counters": reply.counters}))
        return
    click.echo(f"fingerprint {fp}\nnode: running (pid {reply.node.get('pid')})")
    for key in sorted(reply.node):
        if key not in ("fingerprint", "pid"):
            click.echo(f"  {key}: {reply.node[key]}")
    for key in sorted(reply.counters):
        click.echo(f"  {key} = {reply.counters[key]}")


@click.command()
def keygen() -> None:
    """Print a new random network key."""
    click.echo(new_network_key())
