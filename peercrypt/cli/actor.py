"""``peercrypt actor KIND --attach HOST:PORT``: one actor of a node as its own
process (docs/architecture.md, "Attached actors")."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from actors.peer_link import address_towards
from peercrypt import config, errors
from peercrypt.attached import AttachedActor
from peercrypt.cli.common import (
    UserError,
    effective,
    given_flags,
    load_identity,
    network_key_option,
    open_option,
    server_keys,
    setting_option,
    start_node,
    warn_key_in_argv,
)
from peercrypt.core.address import split_host_port
from peercrypt.crypto.identity import fingerprint
from peercrypt.settings import ATTACHABLE_KINDS, NodeSettings

# The node settings an attached actor takes: setting -> click parameter.
ACTOR_SETTINGS = {
    "network_key": "network_key",
    "open": "open_network",
    "mode": "default_mode",
    "max_rate": "max_rate",
    "aimd_window": "aimd_window",
    "aimd_min_window": "aimd_min_window",
    "aimd_max_window": "aimd_max_window",
    "parallel_threads": "parallel_threads",
    "receive_buffer": "receive_buffer",
}


@click.command("actor")
@click.argument("kind", type=click.Choice(sorted(ATTACHABLE_KINDS)))
@click.option(
    "--attach",
    "attach",
    multiple=True,
    required=True,
    metavar="HOST:PORT",
    help="The node to attach to (its public port); repeat to serve several nodes.",
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind (receiver).")
@click.option(
    "--data-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="receiver: port of the data plane (0: any free port).",
)
@click.option(
    "--advertise-data-host",
    default="",
    help="receiver: address senders reach this host at (default: this host's "
    "address towards the node).",
)
@click.option(
    "--inbox", type=click.Path(file_okay=False, path_type=Path), help="receiver: where files go."
)
@network_key_option
@open_option
@setting_option("mode", "default_mode")
@setting_option("max_rate")
@setting_option("aimd_window")
@setting_option("aimd_min_window")
@setting_option("aimd_max_window")
@setting_option("parallel_threads")
@setting_option("receive_buffer")
@click.pass_context
def actor(
    ctx: click.Context,
    /,
    kind: str,
    attach: tuple[str, ...],
    host: str,
    data_port: int,
    advertise_data_host: str,
    inbox: Path | None,
    network_key: str | None,
    open_network: bool,
    **_: Any,
) -> None:
    """Run the node's actor KIND here, attached to the node at --attach.

    The node must run with `--remote-actor KIND` and list this process's
    fingerprint (`peercrypt --data-dir D status`) with `--attach-allow`.
    Runs until SIGINT/SIGTERM (exit 0); exit 4 if a node refuses it.
    """
    try:
        nodes = [split_host_port(a) for a in attach]
    except ValueError as exc:
        raise UserError(f"--attach: {exc}") from None
    obj: dict[str, Any] = ctx.obj
    eff = effective(obj, given_flags(ctx, ACTOR_SETTINGS))
    try:
        policy = config.node_policy(eff)
    except config.ConfigError as exc:
        raise UserError(str(exc)) from None
    logging.getLogger("peercrypt").setLevel(logging.DEBUG if obj["debug"] else logging.INFO)
    data_dir: Path = obj["data_dir"]
    warn_key_in_argv()
    settings = NodeSettings(
        data_dir=data_dir,
        inbox=(inbox or data_dir / "inbox").expanduser(),
        identity=load_identity(data_dir),
        server_keys=server_keys(eff["network_key"] or None, eff["open"]),
        open_network=eff["open"],
        host=host,
        data_port=data_port,
        advertise_data_host=advertise_data_host or address_towards(nodes[0][0]) or "",
        policy=policy,
        max_rate=eff["max_rate"],
        receive_buffer=eff["receive_buffer"],
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    process = start_node(AttachedActor(kind, settings, nodes), f"{host} (the {kind} actor)")
    try:
        click.echo(
            f"peercrypt actor {kind} {fingerprint(settings.identity.public)} attaching to "
            + ", ".join(attach),
            err=True,
        )
        process.run_until(stop)
    finally:
        process.stop()
    if process.refused:
        click.echo(f"peercrypt: error: {process.refused}", err=True)
        sys.exit(errors.NOT_ADMITTED)
