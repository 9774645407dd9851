"""``peercrypt actor KIND --attach HOST:PORT``: one actor of a node as its own
process (docs/architecture.md, "Attached actors").

Each ``actor KIND`` takes the node's settings that actor KIND reads (those
tagged for it in :data:`peercrypt.config.SETTINGS`), from the same layers
(flag, variable, config file) and built by the node's own code
(:func:`peercrypt.cli.node.settings_from`); the rest keep NodeSettings'
defaults, being the node's (its ports, membership, quotas, statistics).
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from actors.peer_link import address_towards
from peercrypt import config, errors
from peercrypt.cli.common import UserError, effective, given_flags, start_node
from peercrypt.cli.node import NODE_OPTIONS, setting_options, settings_from
from peercrypt.core.address import dialable_host, split_host_port
from peercrypt.crypto.identity import fingerprint
from peercrypt.runtime.stop_flag import StopFlag
from peercrypt.settings import ATTACHABLE_KINDS, IN_NODE_ONLY

# What each kind is for, in its --help.
ROLES = {
    "sender": "reads its own disk and opens its own data connections to receivers",
    "receiver": "binds its data port on this host and stores in this host's inbox",
    "scheduler": "paces the sends of every node it is attached to under one cap",
    "discovery": "keeps the node's gossip membership",
    "health": "checks the node's members",
}


def actor_options(kind: str) -> dict[str, str]:
    """The settings ``actor KIND`` takes: setting -> click parameter (the node's)."""
    return {name: NODE_OPTIONS[name] for name in config.actor_settings(kind)}


@click.group("actor")
def actor() -> None:
    """Run one of the node's actors here, attached to the node at --attach.

    The node must run with `--remote-actor KIND` and list this process's
    fingerprint (`peercrypt --data-dir D status`) with `--attach-allow`.
    Each KIND takes the node's settings it reads (flag, variable, config
    key); `peercrypt actor KIND --help` lists them.
    """


def _attached(kind: str) -> click.Command:
    options = actor_options(kind)

    @click.pass_context
    def run(ctx: click.Context, /, attach: tuple[str, ...], **params: Any) -> None:
        if kind in IN_NODE_ONLY:
            raise UserError(f"actor {kind}: {IN_NODE_ONLY[kind]}")
        try:
            nodes = [split_host_port(a) for a in attach]
        except ValueError as exc:
            raise UserError(f"--attach: {exc}") from None
        obj: dict[str, Any] = ctx.obj
        eff = effective(obj, given_flags(ctx, options))
        fixed = {}
        if kind == "receiver":
            given = params["advertise_data_host"]
            if given and not dialable_host(given):
                # (a sender refuses an accept naming it: every send would fail)
                raise UserError(f"--advertise-data-host {given[:64]!r}: not a host name or address")
            towards = given or address_towards(nodes[0][0]) or ""
            fixed["advertise_data_host"] = towards
        settings = settings_from(obj, eff, options, **fixed)
        logging.getLogger("peercrypt").setLevel(logging.DEBUG if obj["debug"] else logging.INFO)
        stop = StopFlag()  # no lock in a signal handler (peercrypt/runtime/stop_flag.py)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        from peercrypt.attached import AttachedActor  # the actors: only a running one

        where = f"{settings.host} (the {kind} actor)"
        process = start_node(AttachedActor(kind, settings, nodes), where)
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

    command: Callable[..., Any] = setting_options(options)(run)
    if kind == "receiver":
        command = click.option(
            "--advertise-data-host",
            default="",
            help="Address senders reach this host at (default: this host's address "
            "towards the node).",
        )(command)
    command = click.option(
        "--attach",
        "attach",
        multiple=True,
        required=True,
        metavar="HOST:PORT",
        help="The node to attach to (its public port); repeat to serve several nodes.",
    )(command)
    about = (
        f"Refused (exit 2): {IN_NODE_ONLY[kind]}; a node refuses `--remote-actor {kind}` too."
        if kind in IN_NODE_ONLY
        else f"Run the node's {kind} actor here (it {ROLES[kind]}), attached to the node at "
        "--attach."
    )
    return click.command(
        kind,
        help=f"{about}\n\nIt takes the node's settings the "
        f"{kind} reads, as `node` does (flag, variable, config key); the others are the "
        "node's. Runs until SIGINT/SIGTERM (exit 0); exit 4 if a node refuses it.",
    )(command)


for _kind in ATTACHABLE_KINDS:
    actor.add_command(_attached(_kind))
