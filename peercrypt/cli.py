"""The ``peercrypt`` command line.

Every user-caused error ends in one line ``peercrypt: error: ...`` and a
non-zero exit code (see :mod:`peercrypt.errors`); tracebacks only with
``--debug``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import zmq

import peercrypt
from peercrypt import cli_modes, errors
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.fragments import (
    DEFAULT_FRAGMENT,
    HEADER_BYTES,
    MAX_DATAGRAM,
    MIN_FRAGMENT,
    parse_group,
)
from peercrypt.crypto.identity import (
    IdentityError,
    fingerprint,
    load_or_create_identity,
    network_server_keys,
    new_network_key,
    normalise_fingerprint,
)
from peercrypt.node import Node
from peercrypt.runtime.supervisor import StartError
from peercrypt.settings import DEFAULT_CHUNK, DEFAULT_PORT, MAX_CHUNK, MIN_CHUNK, NodeSettings
from peercrypt.wire.codec import Message
from peercrypt.wire.messages import CancelRequest, ErrorReply, Progress, SendRequest, SendResult

log = logging.getLogger("peercrypt.cli")


class UserError(click.ClickException):
    """One line to the user and an exit code."""

    def __init__(self, message: str, exit_code: int = errors.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"peercrypt: error: {self.format_message()}", err=True)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "peercrypt"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(peercrypt.__version__, prog_name="peercrypt")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="PEERCRYPT_DATA_DIR",
    default=default_data_dir,
    show_default="~/.local/share/peercrypt",
    help="Node identity, control socket, default inbox.",
)
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def main(ctx: click.Context, data_dir: Path, debug: bool) -> None:
    """PeerCrypt: encrypted peer-to-peer file transfer."""
    ctx.obj = {"data_dir": data_dir.expanduser(), "debug": debug}
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _identity(data_dir: Path) -> Any:
    try:
        return load_or_create_identity(data_dir)
    except IdentityError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot use data directory {data_dir}: {exc.strerror}") from None


def _server_keys(network_key: str | None, open_network: bool) -> Any:
    if open_network and network_key:
        raise UserError("--open and a network key exclude each other")
    if not open_network and not network_key:
        raise UserError(
            "no network key: pass --network-key (or set PEERCRYPT_NETWORK_KEY; "
            "`peercrypt keygen` makes one), or --open for an unauthenticated local try"
        )
    return network_server_keys(None if open_network else network_key)


def _allow_list(values: tuple[str, ...]) -> frozenset[str]:
    try:
        return frozenset(normalise_fingerprint(v) for v in values)
    except ValueError as exc:
        raise UserError(str(exc)) from None


network_key_option = click.option(
    "--network-key",
    envvar="PEERCRYPT_NETWORK_KEY",
    help="Shared secret of your network (env PEERCRYPT_NETWORK_KEY).",
)
open_option = click.option(
    "--open", "open_network", is_flag=True, help="Admit any node (encrypted, unauthenticated)."
)


@main.command()
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
@cli_modes.node_policy_options
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
    policy, max_rate = cli_modes.node_policy(policy_options)
    logging.getLogger("peercrypt").setLevel(logging.DEBUG if obj["debug"] else logging.INFO)
    data_dir: Path = obj["data_dir"]
    settings = NodeSettings(
        data_dir=data_dir,
        inbox=(inbox or data_dir / "inbox").expanduser(),
        identity=_identity(data_dir),
        server_keys=_server_keys(network_key, open_network),
        open_network=open_network,
        allow=_allow_list(allow),
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
    )
    with contextlib.suppress(NodeUnavailable), ControlClient.for_data_dir(data_dir) as client:
        client.status(timeout=1.0)
        raise UserError(f"a node is already running for {data_dir}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    running = _start(Node(settings), f"{host}:{port}")
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            facts = _wait_for_facts(client, ("port", "data_port"))
        click.echo(
            f"peercrypt node {fingerprint(settings.identity.public)} listening on "
            f"{host}:{facts.get('port')} (data port {facts.get('data_port')}), "
            f"inbox {settings.inbox}",
            err=True,
        )
        running.run_until(stop)
    finally:
        running.stop()


def _start(node_: Node, where: str) -> Node:
    try:
        node_.start()
    except zmq.ZMQError as exc:
        raise UserError(f"cannot listen on {where}: {exc.strerror}") from None
    except StartError as exc:
        raise UserError(str(exc), errors.USAGE if exc.user_error else errors.FAILED) from None
    return node_


def _wait_for_facts(client: ControlClient, keys: tuple[str, ...]) -> dict[str, str]:
    deadline = time.monotonic() + 5.0
    while True:
        facts = client.status().node
        if all(k in facts for k in keys) or time.monotonic() > deadline:
            return facts
        time.sleep(0.05)


@contextlib.contextmanager
def _local_node(
    obj: dict[str, Any], network_key: str | None, open_network: bool
) -> Iterator[ControlClient]:
    """The running node of this data dir, or a temporary send-only node."""
    data_dir: Path = obj["data_dir"]
    try:
        client = ControlClient.for_data_dir(data_dir)
        try:
            client.status(timeout=2.0)
        except NodeUnavailable:
            client.close()
            raise
    except NodeUnavailable:
        pass
    else:
        ctx = click.get_current_context()
        given = ctx.get_parameter_source("network_key") == click.core.ParameterSource.COMMANDLINE
        if given or open_network:
            click.echo(
                "peercrypt: note: sending through the running node, on its network "
                "(--network-key/--open apply only when no node runs)",
                err=True,
            )
        with client:
            yield client
        return
    with tempfile.TemporaryDirectory(prefix="peercrypt-") as tmp:
        control_file = Path(tmp) / "control.json"
        settings = NodeSettings(
            data_dir=data_dir,
            inbox=data_dir / "inbox",
            identity=_identity(data_dir),
            server_keys=_server_keys(network_key, open_network),
            open_network=open_network,
            port=None,
            control_file=control_file,
        )
        temporary = _start(Node(settings), "loopback")
        try:
            with ControlClient.from_file(control_file, data_dir) as client:
                yield client
        finally:
            temporary.stop()


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--chunk-size",
    type=click.IntRange(MIN_CHUNK, MAX_CHUNK),
    default=DEFAULT_CHUNK,
    show_default=True,
    help="Bytes per chunk.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the peer before giving up.",
)
@network_key_option
@open_option
@cli_modes.send_policy_options
@click.option("--force", is_flag=True, help="Send even if the health check finds no peer.")
@click.pass_obj
def send(
    obj: dict[str, Any],
    /,
    file: Path,
    host: str,
    port: int,
    as_json: bool,
    no_progress: bool,
    chunk_size: int,
    timeout: float,
    network_key: str | None,
    open_network: bool,
    force: bool,
    **policy_options: Any,
) -> None:
    """Send FILE to the node at HOST PORT; exit 0 once it verified the hash."""
    overrides = cli_modes.send_overrides(policy_options)
    path = file.resolve()
    with _local_node(obj, network_key, open_network) as client:
        request = client.next_id()
        client.send(
            SendRequest(
                request=request,
                path=str(path),
                host=host,
                port=port,
                chunk_size=chunk_size,
                timeout=timeout,
                force=force,
                **overrides,
            )
        )
        result = follow(client, request, path, SendResult, timeout, quiet=as_json or no_progress)
    _report(result, path, host, port, as_json)


R = TypeVar("R", bound=Message)


def follow(
    client: ControlClient,
    request: int,
    path: Path,
    result_type: type[R],
    timeout: float,
    *,
    quiet: bool,
    on_other: Callable[[Message], None] | None = None,
) -> R:
    """Show a progress bar for ``request`` until its ``result_type`` arrives.

    Other replies to the request go to ``on_other``. Ctrl-C cancels the
    request in the node (exit 130). Raises UserError when the node stops, or
    after ``timeout`` + 30 s of silence (it reports progress every 0.1 s).
    """
    from tqdm import tqdm

    bar = tqdm(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        desc=path.name,
        leave=False,
    )
    try:
        return _await_result(client, request, bar, result_type, timeout + 30.0, on_other)
    except KeyboardInterrupt:
        client.send(CancelRequest(request=request))
        with contextlib.suppress(NodeUnavailable, UserError):
            _await_result(client, request, bar, result_type, 5.0, on_other)
        raise UserError("interrupted; the transfer was cancelled", 130) from None
    finally:
        bar.close()


def _await_result(
    client: ControlClient,
    request: int,
    bar: Any,
    result_type: type[R],
    silence: float,
    on_other: Callable[[Message], None] | None,
) -> R:
    quiet_since = time.monotonic()
    while True:
        try:
            msg = client.receive(min(1.0, silence))
        except NodeUnavailable:
            if not client.node_alive():
                raise UserError("the local node stopped", errors.FAILED) from None
            if time.monotonic() - quiet_since < silence:
                continue
            raise UserError("the local node stopped answering", errors.FAILED) from None
        quiet_since = time.monotonic()
        if isinstance(msg, ErrorReply):
            raise UserError(f"the local node refused: {msg.reason}", errors.FAILED)
        if getattr(msg, "request", None) != request:
            continue
        if isinstance(msg, result_type):
            return msg
        if isinstance(msg, Progress):
            bar.update(msg.done_bytes - bar.n)
        elif isinstance(msg, SendResult):  # e.g. "cancelled: the node is stopping"
            raise UserError(msg.reason or msg.code, errors.exit_code(msg.code))
        elif on_other is not None:
            on_other(msg)


def _report(result: SendResult, path: Path, host: str, port: int, as_json: bool) -> NoReturn:
    ok = result.code == "ok"
    rate = result.size / result.seconds / 2**20 if ok and result.seconds > 0 else 0.0
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": ok,
                    "code": result.code,
                    "error": result.reason or None,
                    "file": str(path),
                    "peer": f"{host}:{port}",
                    "size": result.size,
                    "blake3": result.digest.hex() if ok else None,
                    "stored_as": result.stored_as or None,
                    "seconds": round(result.seconds, 3),
                    "mib_per_s": round(rate, 1),
                    "retransmits": result.retransmits,
                    "mode": result.mode or None,
                    "stats": result.stats,
                    "window_history": result.window_history,
                }
            )
        )
    elif ok:
        click.echo(
            f"sent {path.name} ({result.size} bytes) to {host}:{port} as {result.stored_as} "
            f"in {result.seconds:.2f} s ({rate:.1f} MiB/s), blake3 {result.digest.hex()} verified"
        )
    else:
        click.echo(f"peercrypt: error: {result.reason}", err=True)
    sys.exit(errors.exit_code(result.code))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print status as JSON.")
@click.pass_obj
def status(obj: dict[str, Any], as_json: bool) -> None:
    """Show this node's identity, endpoints and counters (exit 1: not running)."""
    data_dir: Path = obj["data_dir"]
    fp = fingerprint(_identity(data_dir).public)
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


@main.command()
def keygen() -> None:
    """Print a new random network key."""
    click.echo(new_network_key())


def run() -> None:
    """Entry point that hides tracebacks unless --debug."""
    debug = "--debug" in sys.argv[1:]
    try:
        main.main(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("peercrypt: error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"peercrypt: error: {exc} (run with --debug for details)", err=True)
        sys.exit(errors.FAILED)


cli_modes.register(main)


import peercrypt.cli_multicast  # noqa: E402  (send -m/--to/-dual, multicast-receive)
import peercrypt.cli_network  # noqa: E402  (peers, join, health-check, ...)
