"""``node`` (run a node in the foreground), ``status`` and ``keygen``."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from peercrypt import config, errors
from peercrypt.cli.common import (
    F,
    UserError,
    allow_list,
    effective,
    given_flags,
    key_file_option,
    load_identity,
    server_keys,
    setting_option,
    start_node,
    wait_for_facts,
    warn_key_in_argv,
)
from peercrypt.cli.runner import NamedPath
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.config_sources import absolute
from peercrypt.core.address import is_ipv6
from peercrypt.core.fragments import (
    HEADER_BYTES,
    parse_group,
)
from peercrypt.crypto.identity import fingerprint, new_network_key
from peercrypt.runtime.stop_flag import StopFlag
from peercrypt.settings import (
    ATTACHABLE_KINDS,
    IN_NODE_ONLY,
    NodeSettings,
    default_modes,
    private_modes,
)

if TYPE_CHECKING:
    from peercrypt.node import Node

# Settings of the node, in --help order: (setting, click parameter name).
NODE_OPTIONS: dict[str, str] = {
    "host": "host",
    "port": "port",
    "data_port": "data_port",
    "advertise_data_port": "advertise_data_port",
    "inbox": "inbox",
    "network_key": "network_key",
    "open": "open_network",
    "allow": "allow",
    "mode": "default_mode",
    "max_rate": "max_rate",
    "aimd_window": "aimd_window",
    "aimd_min_window": "aimd_min_window",
    "aimd_max_window": "aimd_max_window",
    "parallel_threads": "parallel_threads",
    "bootstrap_host": "bootstrap_host",
    "bootstrap_port": "bootstrap_port",
    "advertise_host": "advertise_host",
    "gossip_interval": "gossip_interval",
    "disable_gossip": "no_gossip",
    "health_check_interval": "health_check_interval",
    "max_retries": "max_retries",
    "connection_timeout": "connect_timeout",
    "window": "window",
    "receive_buffer": "receive_buffer",
    "completed_memory": "completed_memory",
    "max_transfers": "max_transfers",
    "max_transfers_per_peer": "max_transfers_per_peer",
    "max_transfers_per_host": "max_transfers_per_host",
    "max_outgoing": "max_outgoing",
    "multicast_group": "multicast_group",
    "multicast_ttl": "multicast_ttl",
    "multicast_datagram": "multicast_datagram",
    "remote_actors": "remote_actors",
    "attach_allow": "attach_allow",
    "isolate_data_plane": "isolate_data_plane",
    "part_expiry": "part_expiry",
    "peer_quota": "peer_quota",
    "part_quota": "part_quota",
    "tree_max_files": "tree_max_files",
    "pending_quota": "pending_quota",
    "data_port_memory": "data_port_memory",
    "control_port_memory": "control_port_memory",
    "stats_keep_days": "stats_keep_days",
    "stats_max_transfers": "stats_max_transfers",
    "no_stats": "no_stats",
    "no_local_ipc": "no_local_ipc",
    "shm_ring": "shm_ring",
    "direct_writes": "direct_writes",
    "check_as_written": "check_as_written",
}


def setting_options(names: Collection[str]) -> Callable[[F], F]:
    """The flags of the settings ``names`` (in the node's order), and
    ``--network-key-file`` with the network key: ``node``'s, ``start``'s and
    each ``actor KIND``'s options."""

    def decorate(func: F) -> F:
        for name, param in reversed(NODE_OPTIONS.items()):
            if name in names:
                func = setting_option(name, param)(func)
        return key_file_option(func) if "network_key" in names else func

    return decorate


# Every node setting as a flag (``node`` and ``start`` share them).
node_options = setting_options(NODE_OPTIONS)

# Settings whose NodeSettings field has another name, or is their negation.
_RENAMED = {
    "peer_quota": "peer_part_quota",
    "connection_timeout": "connect_timeout",
    "health_check_interval": "health_interval",
}
_NEGATED = {"disable_gossip": "gossip_enabled", "no_stats": "stats_enabled",
            "no_local_ipc": "local_ipc"}  # fmt: skip
_POLICY = {"mode", "aimd_window", "aimd_min_window", "aimd_max_window", "parallel_threads"}
# The NodeSettings fields a setting makes (settings_from), where not its own name.
_MAKES = {
    **{name: ("policy",) for name in _POLICY},
    "bootstrap_host": ("bootstrap",),
    "bootstrap_port": ("bootstrap",),
    "multicast_datagram": ("multicast_fragment",),
    "inbox": ("inbox", "file_mode", "inbox_mode"),
    "network_key": ("server_keys",),
    "open": ("open_network", "server_keys"),
    **{name: (made,) for name, made in {**_RENAMED, **_NEGATED}.items()},
}


def fields_made(name: str) -> tuple[str, ...]:
    """The NodeSettings fields setting ``name`` makes (what an actor reads of it)."""
    return _MAKES.get(name, (name,))


# Settings made into fields below, not as they are.
_BUILT = {
    *_POLICY,
    "bootstrap_host",
    "bootstrap_port",
    "multicast_group",
    "multicast_datagram",
    "remote_actors",
    "inbox",
    "network_key",
    "open",
    "allow",
    "attach_allow",
}


def node_settings(obj: dict[str, Any], ctx: click.Context) -> tuple[NodeSettings, config.Effective]:
    """The node's settings from every layer; UserError naming what is invalid."""
    eff = effective(obj, given_flags(ctx, NODE_OPTIONS))
    return settings_from(obj, eff, NODE_OPTIONS), eff


def settings_from(
    obj: dict[str, Any], eff: config.Effective, names: Collection[str], **fixed: Any
) -> NodeSettings:
    """NodeSettings from the resolved settings ``names`` (the rest: NodeSettings'
    defaults) and the fields ``fixed``: the node's (every setting), an attached
    actor's (those its kind reads, peercrypt/cli/actor.py). UserError naming
    what is invalid."""
    taken = set(names)
    fields: dict[str, Any] = {}
    if {"port", "data_port"} <= taken:
        try:
            config.check_ports(eff)
        except config.ConfigError as exc:
            raise UserError(str(exc)) from None
    if taken & {"bootstrap_host", "bootstrap_port"}:
        if bool(eff["bootstrap_host"]) != bool(eff["bootstrap_port"]):
            raise UserError(
                "--bootstrap-host and --bootstrap-port go together "
                "(PEERCRYPT_BOOTSTRAP_HOST, PEERCRYPT_BOOTSTRAP_PORT)"
            )
        if eff["bootstrap_host"]:
            fields["bootstrap"] = ((eff["bootstrap_host"], eff["bootstrap_port"]),)
    if "multicast_group" in taken and eff["multicast_group"]:
        try:
            group, group_port = parse_group(eff["multicast_group"])
        except ValueError as exc:
            raise UserError(f"--multicast-group: {exc}", errors.USAGE) from None
        fields["multicast_group"] = f"{group}:{group_port}"
    if "multicast_datagram" in taken:
        fields["multicast_fragment"] = eff["multicast_datagram"] - HEADER_BYTES
    if taken & {*_POLICY, "max_rate"}:  # the rate cap is checked with the policy
        try:
            policy = config.node_policy(eff)
        except config.ConfigError as exc:
            raise UserError(str(exc)) from None
        if taken & _POLICY:
            fields["policy"] = policy
    if "remote_actors" in taken:
        remote_actors = tuple(dict.fromkeys(eff["remote_actors"]))
        unknown = sorted(set(remote_actors) - set(ATTACHABLE_KINDS))
        if unknown:
            raise UserError(
                f"--remote-actor {', '.join(unknown)}: not an attachable actor "
                f"(choose from {', '.join(sorted(set(ATTACHABLE_KINDS) - set(IN_NODE_ONLY)))})"
            )
        for kind in remote_actors:
            if kind in IN_NODE_ONLY:
                raise UserError(f"--remote-actor {kind}: {IN_NODE_ONLY[kind]}")
        fields["remote_actors"] = remote_actors
    data_dir: Path = obj["data_dir"]
    fields["inbox"] = data_dir / "inbox"
    if "inbox" in taken:
        if eff["inbox"]:
            fields["inbox"] = absolute(Path(eff["inbox"]))
        # Received files: what the umask allows, owner-only in an inbox the user named.
        fields["file_mode"], fields["inbox_mode"] = (
            private_modes() if eff["inbox"] else default_modes()
        )
    for name in taken - _BUILT:
        if name in _NEGATED:
            fields[_NEGATED[name]] = not eff[name]
        else:
            fields[_RENAMED.get(name, name)] = eff[name]
    warn_key_in_argv()
    identity = load_identity(data_dir)
    keys = server_keys(eff["network_key"] or None, eff["open"])
    for name in taken & {"allow", "attach_allow"}:
        fields[name] = allow_list(eff[name])
    return NodeSettings(
        data_dir=data_dir,
        identity=identity,
        server_keys=keys,
        open_network=eff["open"],
        **{**fields, **fixed},
    )


def _make_inbox(inbox: Path, mode: int) -> None:
    """The inbox, made if need be (as the receiver would), or one error line
    (a file there made the receiver's start fail with a log line and
    "actor receiver failed to start")."""
    try:
        inbox.mkdir(parents=True, exist_ok=True, mode=mode)
    except FileExistsError:
        raise UserError(f"inbox {inbox}: not a directory") from None
    except OSError as exc:
        raise UserError(f"cannot make the inbox {inbox}: {exc.strerror}") from None


def run_node(
    obj: dict[str, Any],
    settings: NodeSettings,
    quiet_logs: bool = False,
    stop: StopFlag | None = None,
) -> Node:
    """Start a node for the data dir (refusing a second one) and print where it
    listens. Logs: debug with --debug, else info (warnings only if ``quiet_logs``).
    ``stop``: a stop asked for meanwhile ends the wait for its data-plane
    processes (the caller then stops the node)."""
    level = logging.WARNING if quiet_logs else logging.INFO
    logging.getLogger("peercrypt").setLevel(logging.DEBUG if obj["debug"] else level)
    data_dir = settings.data_dir
    lock = DataDirLock.take(data_dir)
    try:
        return _run_node(settings, lock, stop)
    except BaseException:
        lock.release()  # (if the node did not already)
        raise


LOCK_FILE = "node.lock"  # in the data dir: see DataDirLock


class DataDirLock:
    """An exclusive lock on ``DATA_DIR/node.lock``, held by an open file
    while the node runs (released at its stop; by the kernel, if the process
    dies): a second node for the data dir is refused also when the first
    does not answer its status in time (stopped), and of two started at
    once one is."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.kept = False  # held until the process ends (a node whose actor is stuck)

    @classmethod
    def take(cls, data_dir: Path) -> DataDirLock:
        path = data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise UserError(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"a node is already running for {data_dir}") from None
        except OSError:
            pass  # (a file system without locks: the status check decides, as before)
        return cls(fd)

    def release(self) -> None:
        if self.kept:
            return
        fd, self.fd = self.fd, -1  # (first: a second call never closes a number reused since)
        if fd >= 0:
            os.close(fd)

    def keep(self) -> None:
        """Hold it until the process ends: a stuck actor of the node may still
        work in the data dir."""
        self.kept = True


def _run_node(settings: NodeSettings, lock: DataDirLock, stop: StopFlag | None) -> Node:
    data_dir = settings.data_dir
    with contextlib.suppress(NodeUnavailable), ControlClient.for_data_dir(data_dir) as client:
        client.status(timeout=1.0)
        raise UserError(f"a node is already running for {data_dir}")
    _make_inbox(settings.inbox, settings.inbox_mode)
    host = f"[{settings.host}]" if is_ipv6(settings.host) else settings.host
    where = f"{host}:{settings.port}"
    from peercrypt.data_plane import isolated_kinds, private_endpoint, with_isolation
    from peercrypt.node import Node  # the actors: only the node command needs them

    isolated = isolated_kinds(settings)
    if settings.isolate_data_plane and not isolated:
        raise UserError(
            "--isolate-data-plane: the sender and the receiver both run attached "
            "from elsewhere (--remote-actor): there is nothing to isolate"
        )
    if isolated:
        try:
            endpoint = private_endpoint(settings.data_dir)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        settings = dataclasses.replace(with_isolation(settings), isolated_endpoint=endpoint)
    new = Node(settings)
    new.release_lock, new.keep_lock = lock.release, lock.keep
    if isolated:
        # Started before the node: their interpreters' start overlaps its
        # own; they attach on its private endpoint once it is bound.
        from peercrypt.data_plane import DataPlaneProcesses

        level = logging.getLogger("peercrypt").getEffectiveLevel()
        ended = new.tell_attach_ended
        new.data_plane = DataPlaneProcesses(new.settings, isolated, level, ended).start()
    try:
        running = start_node(new, where)
    except BaseException:
        if new.data_plane is not None:
            new.data_plane.stop()
        raise
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            if isolated:
                facts = _await_data_plane(running, client, isolated, stop)
            else:
                facts = wait_for_facts(client, ("port", "data_port"))
    except BaseException:
        running.stop()
        raise
    if stop is not None and stop.is_set():
        return running  # (stopped while starting: nothing to announce)
    click.echo(
        f"peercrypt node {fingerprint(settings.identity.public)} listening on "
        f"{host}:{facts.get('port')} (data port {facts.get('data_port')}), "
        f"inbox {settings.inbox}",
        err=True,
    )
    return running


def _await_data_plane(
    running: Node, client: ControlClient, kinds: tuple[str, ...], stop: StopFlag | None
) -> dict[str, str]:
    """Wait until each of the node's isolated actors (peercrypt/data_plane.py)
    attached; the node's facts then. UserError if one does not."""
    from peercrypt.data_plane import ATTACH_TIMEOUT

    assert running.data_plane is not None
    deadline = time.monotonic() + ATTACH_TIMEOUT
    while True:
        facts = client.status().node
        waiting = [k for k in kinds if not facts.get(f"remote_{k}", "").startswith("attached")]
        if (not waiting and "data_port" in facts) or (stop is not None and stop.is_set()):
            return facts
        ended = running.data_plane.ended()
        if ended:
            raise UserError(
                f"the node's {' and '.join(ended)} process ended at its start "
                "(--isolate-data-plane; its log lines are above)"
            )
        if time.monotonic() > deadline:
            raise UserError(
                f"the node's {' and '.join(waiting) or 'receiver'} process did not attach "
                f"in {ATTACH_TIMEOUT:.0f} s (--isolate-data-plane; its log lines are above)",
                errors.FAILED,
            )
        # The node's supervisor starts the proxies' replacements as each attaches.
        running.supervisor.poll(0.05)


@click.command()
@node_options
@click.pass_context
def node(ctx: click.Context, /, **_: Any) -> None:
    """Run a node in the foreground until SIGINT/SIGTERM."""
    settings, _eff = node_settings(ctx.obj, ctx)
    stop = StopFlag()  # no lock in a signal handler (peercrypt/runtime/stop_flag.py)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    running = run_node(ctx.obj, settings, stop=stop)
    try:
        running.run_until(stop)
    finally:
        running.stop()


@click.command()
@click.option(
    "-o",
    "--output",
    type=NamedPath(dir_okay=False, path_type=Path),
    default=None,
    help="Write it to this new file, readable by you alone (as --network-key-file "
    "wants it), instead of printing it; an existing file is not replaced.",
)
def keygen(output: Path | None) -> None:
    """Print a new random network key (it carries its network's own salt)."""
    key = new_network_key()
    if output is None:
        click.echo(key)
        return
    try:  # created owner-only, never an existing file (a key there may be in use)
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{output} exists: not replaced", errors.USAGE) from None
    except OSError as exc:
        raise UserError(f"cannot create {output}: {exc.strerror}", errors.USAGE) from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    except OSError as exc:  # a full disk: no empty file left to be refused as existing
        with contextlib.suppress(OSError):
            os.unlink(output)
        raise UserError(f"cannot write {output}: {exc.strerror}", errors.USAGE) from None
    click.echo(f"network key written to {output} (owner-only)", err=True)
