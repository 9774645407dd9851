"""Layered configuration: one table of settings, five layers, one answer.

Every entry point (``node``, ``start``, ``send``'s temporary node, the
container image) reads its settings through :func:`resolve`. Layers, lowest
first:

1. the defaults in :data:`SETTINGS`;
2. a TOML config file: ``--config FILE`` (or ``PEERCRYPT_CONFIG``), else
   ``DATA_DIR/config.toml`` when it exists; keys are the setting names;
3. a ``.env`` file in the working directory (``KEY=VALUE`` lines, as
   docker compose reads it);
4. the process environment;
5. command-line flags.

Each setting has one environment variable: the old tool's names
(``DEFAULT_MODE``, ``GOSSIP_INTERVAL``, ...) where it had one, else
``PEERCRYPT_<NAME>``. An invalid value raises :class:`ConfigError` whose
message names the variable (or the config key), the value and what is
accepted; nothing starts. Pure apart from reading the two files.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peercrypt import sizes
from peercrypt.config_sources import CONFIG_ENV, DATA_DIR_ENV, PREFIX
from peercrypt.config_sources import ConfigError as ConfigError  # raised by resolve()
from peercrypt.core.address import visible_ascii
from peercrypt.core.fragments import (
    DEFAULT_FRAGMENT,
    HEADER_BYTES,
    MAX_DATAGRAM,
    MIN_FRAGMENT,
    parse_group,
)
from peercrypt.core.modes import (
    AIMD_MAX_WINDOW_KB,
    AIMD_MIN_WINDOW_KB,
    AIMD_WINDOW_KB,
    MAX_LANES,
    MAX_RATE,
    MAX_WINDOW_KB,
    MODES,
    PARALLEL_LANES,
    Policy,
    PolicyError,
    check_paced_rate,
    derive_windows,
)
from peercrypt.settings import ATTACHABLE_KINDS, DEFAULT_PORT, MAX_PORT_MEMORY, MAX_QUOTA

NODE_MODES = (*MODES, "multicast")
# The variables of the tool our users come from; each is a setting's variable.
OLD_TOOL_VARIABLES = (
    "DEFAULT_MODE",
    "GOSSIP_INTERVAL",
    "DISABLE_GOSSIP",
    "AIMD_WINDOW",
    "AIMD_MIN_WINDOW",
    "AIMD_MAX_WINDOW",
    "PARALLEL_THREADS",
    "MAX_RETRIES",
    "CONNECTION_TIMEOUT",
    "HEALTH_CHECK_INTERVAL",
)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _bound(x: float | None) -> str:
    """A range's bound as a user writes it: 1048576, not 1.04858e+06; 0.01."""
    if x is not None and float(x).is_integer():
        return str(int(x))
    return f"{x:g}" if x is not None else ""


@dataclass(frozen=True)
class Setting:
    """One setting: its name (the config-file key), variable, flag and range."""

    name: str
    env: str
    # "int", "float", "bool", "str", "host", "choice", "list", "fingerprints" (a list of
    # node fingerprints), "group" (an IPv4 multicast GROUP:PORT, or empty), "secret";
    # "size" (bytes) and "rate" (bytes/s) take suffixes (peercrypt/sizes.py)
    kind: str
    default: Any
    help: str
    flag: str = ""  # the node's command-line flag ("" : none)
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""
    aliases: tuple[str, ...] = ()  # other variables read for it (older names)
    empty_ok: bool = False  # a host that may be empty (the help says what empty means)
    # The attachable actors that read it: `peercrypt actor KIND` takes it
    # (flag, variable, config key) as the node does; () : node-wide only.
    actors: tuple[str, ...] = ()

    def accepted(self) -> str:
        """What values are valid, for error messages and docs."""
        unit = f" {self.unit}" if self.unit else ""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false (also 1/0, yes/no, on/off)"
        if self.kind in ("size", "rate"):
            return sizes.accepted(self.low, self.high, rate=self.kind == "rate")
        if self.kind in ("int", "float"):
            number = "an integer" if self.kind == "int" else "a number"
            if self.high is None:
                return f"{number} >= {_bound(self.low)}{unit}"
            return f"{number} in {_bound(self.low)}..{_bound(self.high)}{unit}"
        if self.kind == "list":
            return "a comma-separated list"
        if self.kind == "fingerprints":
            return "a comma-separated list of node fingerprints (`peercrypt status` shows one)"
        if self.kind == "host":
            host = "a host name or address (visible ASCII, no blank)"
            return f"{host}; or empty" if self.empty_ok else host
        if self.kind == "group":
            return (
                "GROUP:PORT, an IPv4 multicast address (224.0.0.0/4) and a port in 1..65535; "
                "or empty"
            )
        return "text"

    def parse(self, value: Any) -> Any:
        """The typed value; ConfigError (without the variable name) if invalid."""
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ConfigError(f"expected {self.accepted()}")
        if self.kind in ("size", "rate"):
            if isinstance(value, float) and value.is_integer():  # TOML: 4e6
                value = int(value)
            try:
                return sizes.checked(value, self.low, self.high, rate=self.kind == "rate")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.kind in ("int", "float"):
            if isinstance(value, bool):
                raise ConfigError(f"expected {self.accepted()}")
            try:
                number: float = (
                    int(str(value).strip()) if self.kind == "int" else float(str(value).strip())
                )
            except ValueError:
                raise ConfigError(f"expected {self.accepted()}") from None
            if number in (math.inf, -math.inf):  # a range without a high bound took it
                raise ConfigError(f"expected {self.accepted()} (not infinite)")
            if number != number or (self.low is not None and number < self.low):
                raise ConfigError(f"expected {self.accepted()}")
            if self.high is not None and number > self.high:
                raise ConfigError(f"expected {self.accepted()}")
            return number
        if self.kind == "choice":
            text = str(value).strip().lower()
            if text not in self.choices:
                raise ConfigError(f"expected {self.accepted()}")
            return text
        if self.kind == "list":
            if isinstance(value, list | tuple):
                return tuple(str(v).strip() for v in value if str(v).strip())
            return tuple(v.strip() for v in str(value).split(",") if v.strip())
        if self.kind == "fingerprints":  # checked here, not where the node first reads them
            from peercrypt.crypto.identity import normalise_fingerprint

            items = value if isinstance(value, list | tuple) else str(value).split(",")
            try:
                return tuple(normalise_fingerprint(str(v)) for v in items if str(v).strip())
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if not isinstance(value, str):
            raise ConfigError("expected text")
        if self.kind == "group":  # (what the node takes: core/fragments.py)
            if not value.strip():
                return ""
            try:
                group, port = parse_group(value)
            except ValueError:
                raise ConfigError(f"expected {self.accepted()}") from None
            return f"{group}:{port}"
        if self.kind == "host" and (value or not self.empty_ok) and not visible_ascii(value):
            raise ConfigError(f"expected {self.accepted()}")
        return value


def _s(name: str, env: str, kind: str, default: Any, help: str, **kw: Any) -> Setting:
    return Setting(name=name, env=env, kind=kind, default=default, help=help, **kw)


# Which attached actors read a setting (docs/architecture.md, "Attached actors").
_RECV, _SEND, _SCHED = ("receiver",), ("sender",), ("scheduler",)
_GOSSIP, _HEALTH, _ALL = ("discovery",), ("health",), ATTACHABLE_KINDS
_DATA = ("receiver", "sender")  # the two ends of the data plane
_RATE = ("scheduler", "sender")  # the cap: the scheduler's; paced sends: the sender's
_TRIES = ("sender", "discovery", "health")  # they reach peers themselves

# The one table. Order: the old tool's variables first, then the rest.
SETTINGS: tuple[Setting, ...] = (
    _s("mode", "DEFAULT_MODE", "choice", "normal", "Default transfer mode.",
       flag="--mode", choices=NODE_MODES, actors=_SCHED),
    _s("gossip_interval", "GOSSIP_INTERVAL", "float", 5.0, "Seconds between gossip rounds.",
       flag="--gossip-interval", low=0.01, high=3600, unit="s", actors=_GOSSIP),
    _s("disable_gossip", "DISABLE_GOSSIP", "bool", False, "Start with gossip disabled.",
       flag="--no-gossip/--gossip", actors=_GOSSIP),
    _s("aimd_window", "AIMD_WINDOW", "int", AIMD_WINDOW_KB,
       "AIMD initial congestion window (missing bounds are derived from it).",
       flag="--aimd-window", low=1, high=MAX_WINDOW_KB, unit="KB",
       actors=_SCHED),
    _s("aimd_min_window", "AIMD_MIN_WINDOW", "int", AIMD_MIN_WINDOW_KB,
       "AIMD minimum window.", flag="--aimd-min-window", low=1, high=MAX_WINDOW_KB, unit="KB",
       actors=_SCHED),
    _s("aimd_max_window", "AIMD_MAX_WINDOW", "int", AIMD_MAX_WINDOW_KB,
       "AIMD maximum window.", flag="--aimd-max-window", low=1, high=MAX_WINDOW_KB, unit="KB",
       actors=_SCHED),
    _s("parallel_threads", "PARALLEL_THREADS", "int", PARALLEL_LANES,
       "Default lanes (connections and crypto workers) of parallel mode.",
       flag="--parallel-threads", low=1, high=MAX_LANES, actors=_SCHED),
    _s("max_retries", "MAX_RETRIES", "int", 3, "Retries of a network operation.",
       flag="--max-retries", low=0, high=100, actors=_TRIES),
    _s("connection_timeout", "CONNECTION_TIMEOUT", "float", 3.0,
       "Seconds one attempt waits for a peer.", flag="--timeout", low=0.05, high=600, unit="s",
       actors=_TRIES),
    _s("health_check_interval", "HEALTH_CHECK_INTERVAL", "float", 10.0,
       "Seconds between health checks of every member.",
       flag="--health-check-interval", low=0.01, high=3600, unit="s", actors=_HEALTH),
    _s("host", "PEERCRYPT_HOST", "host", "0.0.0.0", "Address to bind.", flag="--host",
       actors=_RECV),
    _s("port", "PEERCRYPT_PORT", "int", DEFAULT_PORT,
       "The node's public port (0: any free port).", flag="--port", low=0, high=65535),
    _s("data_port", "PEERCRYPT_DATA_PORT", "int", 0,
       "Port of the data plane (0: any free port; advertised to senders).",
       flag="--data-port", low=0, high=65535, actors=_RECV),
    _s("advertise_data_port", "PEERCRYPT_ADVERTISE_DATA_PORT", "int", 0,
       "Data port to advertise instead of the bound one (NAT, proxies; 0: the bound one).",
       flag="--advertise-data-port", low=0, high=65535, actors=_RECV),
    _s("advertise_host", "PEERCRYPT_ADVERTISE_HOST", "host", "",
       "Address members should use for this node (empty: --host, or for a wildcard "
       "--host the address of the interface that routes to the bootstrap member, or to "
       "the default route of --host's family if the member's is another).",
       flag="--advertise-host", empty_ok=True),
    _s("inbox", "PEERCRYPT_INBOX", "str", "",
       "Where received files go (empty: DATA_DIR/inbox, files as the umask allows; a folder "
       "named here gets files readable by the owner only).", flag="--inbox", actors=_RECV),
    _s("network_key", "PEERCRYPT_NETWORK_KEY", "secret", "",
       "Shared secret of your network (`peercrypt keygen` makes one).", flag="--network-key",
       actors=_ALL),
    _s("open", "PEERCRYPT_OPEN", "bool", False,
       "Admit any node (encrypted, unauthenticated).", flag="--open/--no-open", actors=_ALL),
    _s("allow", "PEERCRYPT_ALLOW", "fingerprints", (),
       "Admit only these node fingerprints (empty: every member).", flag="--allow"),
    _s("bootstrap_host", "PEERCRYPT_BOOTSTRAP_HOST", "host", "",
       "Join the network through this member.", flag="--bootstrap-host", empty_ok=True),
    _s("bootstrap_port", "PEERCRYPT_BOOTSTRAP_PORT", "int", 0,
       "Port of the bootstrap member (0: none).", flag="--bootstrap-port", low=0, high=65535),
    _s("window", "PEERCRYPT_WINDOW", "int", 16, "Chunks in flight per incoming transfer.",
       flag="--window", low=1, high=4096, actors=_RECV),
    _s("receive_buffer", "PEERCRYPT_RECEIVE_BUFFER", "size", 32 << 20,
       "Bytes of chunks in flight to this node, all incoming transfers together (their "
       "credit); the writer's queue, the decrypt buffers and the data port's bound follow "
       "it. One transfer moves at most this much per round trip.",
       flag="--receive-buffer", low=4 << 20, high=1 << 30, actors=_DATA),
    _s("completed_memory", "PEERCRYPT_COMPLETED_MEMORY", "int", 4096,
       "Finished incoming transfers remembered (up to an hour) to answer a sender whose "
       "confirmation was lost; beyond it the sender finds out by offering the file again.",
       flag="--completed-memory", low=1, high=1 << 20, actors=_RECV),
    _s("max_transfers", "PEERCRYPT_MAX_TRANSFERS", "int", 64,
       "Incoming transfers running at once; beyond it an offer is refused (busy).",
       flag="--max-transfers", low=1, high=4096, actors=_RECV),
    _s("max_transfers_per_peer", "PEERCRYPT_MAX_TRANSFERS_PER_PEER", "int", 8,
       "Incoming transfers running at once from one sender identity.",
       flag="--max-transfers-per-peer", low=1, high=4096, actors=_RECV),
    _s("max_transfers_per_host", "PEERCRYPT_MAX_TRANSFERS_PER_HOST", "int", 16,
       "Incoming transfers running at once from one address (identities cost nothing).",
       flag="--max-transfers-per-host", low=1, high=4096, actors=_RECV),
    _s("max_outgoing", "PEERCRYPT_MAX_OUTGOING", "int", 16,
       "Sends running at once; more wait in line.",
       flag="--max-outgoing", low=1, high=1024, actors=_SEND),
    _s("max_rate", "PEERCRYPT_MAX_RATE", "rate", 0,
       "Cap of all outgoing transfers together, bytes/s (0: none).", flag="--max-rate",
       low=0, high=MAX_RATE, actors=_RATE),
    _s("multicast_group", "PEERCRYPT_MULTICAST_GROUP", "group", "",
       "Send multicast sessions as UDP datagrams to this IPv4 group GROUP:PORT "
       "(e.g. 239.255.80.67:7480; empty: over PUB/SUB).",
       flag="--multicast-group", aliases=("MULTICAST_GROUP",)),
    _s("multicast_ttl", "PEERCRYPT_MULTICAST_TTL", "int", 1,
       "Router hops multicast datagrams may cross (1: this link only).",
       flag="--multicast-ttl", low=0, high=255),
    _s("multicast_datagram", "PEERCRYPT_MULTICAST_DATAGRAM", "size",
       DEFAULT_FRAGMENT + HEADER_BYTES,
       "Largest multicast datagram; with UDP GSO the interface MTU caps it (no IP fragments).",
       flag="--multicast-datagram", low=MIN_FRAGMENT + HEADER_BYTES, high=MAX_DATAGRAM),
    # Actors attached across hosts (docs/architecture.md, "Attached actors").
    _s("remote_actors", "PEERCRYPT_REMOTE_ACTORS", "list", (),
       "Actors not run here: a `peercrypt actor NAME --attach` process runs each.",
       flag="--remote-actor"),
    _s("attach_allow", "PEERCRYPT_ATTACH_ALLOW", "fingerprints", (),
       "Identities (fingerprints) allowed to attach as this node's remote actors.",
       flag="--attach-allow"),
    _s("isolate_data_plane", "PEERCRYPT_ISOLATE_DATA_PLANE", "bool", False,
       "Run the sender and the receiver each in a process of their own beside the node "
       "(attached through a private local socket), so status and health checks answer "
       "within milliseconds while transfers keep every core busy; costs more memory and "
       "CPU per byte.",
       flag="--isolate-data-plane/--no-isolate-data-plane"),
    # Resume (docs/resume.md): how long kept parts wait, byte quotas of parts.
    _s("part_expiry", "PEERCRYPT_PART_EXPIRY", "float", 86400.0,
       "Seconds a part of an interrupted transfer waits for its resume.",
       flag="--part-expiry", low=1, unit="s", actors=_RECV),
    _s("peer_quota", "PEERCRYPT_PEER_QUOTA", "size", 0,
       "Bytes of parts (running and kept) one sender may have here (0: no quota).",
       flag="--peer-quota", low=0, high=MAX_QUOTA, actors=_RECV),
    _s("part_quota", "PEERCRYPT_PART_QUOTA", "size", 0,
       "Bytes of parts all senders together may have here (0: no quota).",
       flag="--part-quota", low=0, high=MAX_QUOTA, actors=_RECV),
    # Folders and many files in one transfer (docs/commands.md, "send").
    _s("tree_max_files", "PEERCRYPT_TREE_MAX_FILES", "int", 100_000,
       "Files and folders one incoming folder transfer may hold (its manifest: "
       "at most 256 bytes each).", flag="--tree-max-files", low=1, actors=_RECV),
    _s("pending_quota", "PEERCRYPT_PENDING_QUOTA", "size", 0,
       "Bytes one sender identity, and one address, may have still to write here "
       "(0: no quota).",
       flag="--pending-quota", low=0, high=MAX_QUOTA, actors=_RECV),
    _s("data_port_memory", "PEERCRYPT_DATA_PORT_MEMORY", "size", 0,
       "Bytes the data port's TCP connections may have read and not delivered, in all; "
       "beyond it the addresses holding more than their share are disconnected, "
       "costliest first (0: twice the receive buffer and two of the largest chunks, 96 MiB). "
       "The sender's data connections have a bound of the same size (beyond it a "
       "receiver's connection is closed and its transfers fail).",
       flag="--data-port-memory", low=0, high=MAX_PORT_MEMORY, actors=_DATA),
    _s("control_port_memory", "PEERCRYPT_CONTROL_PORT_MEMORY", "size", 32 << 20,
       "Bytes the public port's connections may have read and the node not taken, in "
       "all; beyond it the addresses holding more than their share are disconnected, "
       "costliest first. Each actor's links to other nodes have a bound of the same "
       "size (beyond it a link pauses, 1 s doubling to 60 s).",
       flag="--control-port-memory", low=1 << 20, high=MAX_PORT_MEMORY, actors=_ALL),
    # The statistics history (docs/statistics.md).
    _s("stats_keep_days", "PEERCRYPT_STATS_KEEP_DAYS", "float", 90.0,
       "Forget recorded transfers older than this (0: never).", flag="--stats-keep-days",
       low=0, unit="days"),
    _s("stats_max_transfers", "PEERCRYPT_STATS_MAX_TRANSFERS", "int", 10_000,
       "Keep at most this many recorded transfers, the newest (0: no limit).",
       flag="--stats-max-transfers", low=0),
    _s("no_stats", "PEERCRYPT_NO_STATS", "bool", False, "Record no statistics history.",
       flag="--no-stats/--stats"),
    _s("no_local_ipc", "PEERCRYPT_NO_LOCAL_IPC", "bool", False,
       "Send and take chunks between two nodes of this host over TCP, not a Unix socket nor shared "
       "memory.",
       flag="--no-local-ipc/--local-ipc", actors=_DATA),
    _s("shm_ring", "PEERCRYPT_SHM_RING", "bool", False,
       "Send and take chunks between two nodes of this host through shared memory (both "
       "nodes need it; less CPU per byte for one transfer, more memory with many at once).",
       flag="--shm-ring/--no-shm-ring", actors=_DATA),
    _s("direct_writes", "PEERCRYPT_DIRECT_WRITES", "bool", True,
       "Write received chunks to the disk directly (O_DIRECT) where the inbox's filesystem "
       "takes it (less CPU where page cache pages are dear; slower where they are cheap). "
       "Off: through the page cache.",
       flag="--direct-writes/--no-direct-writes", actors=_RECV),
    _s("check_as_written", "PEERCRYPT_CHECK_AS_WRITTEN", "bool", True,
       "Check a new part as it is written: hash each chunk as it is written and read back "
       "only what a truncate by name could change unseen (each chunk's last block), so the "
       "check after the last chunk is short; the whole part is read back after all if "
       "another process opened or truncated it. Off: all of it read back after the last "
       "chunk, from the disk itself where it was written directly.",
       flag="--check-as-written/--no-check-as-written", actors=_RECV),
)  # fmt: skip

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
assert all(set(s.actors) <= set(ATTACHABLE_KINDS) for s in SETTINGS)


def actor_settings(kind: str) -> tuple[str, ...]:
    """The settings the attachable actor ``kind`` reads, in the table's order:
    what ``peercrypt actor KIND`` takes."""
    return tuple(s.name for s in SETTINGS if kind in s.actors)


# Every variable a user may set (the old tool's, PEERCRYPT_*, and older aliases).
VARIABLES: dict[str, Setting] = {
    **{s.env: s for s in SETTINGS},
    **{alias: s for s in SETTINGS for alias in s.aliases},
}


# Our variables that name no setting: where the settings are (config_sources)
# and the container entrypoint's (docker/entrypoint.sh).
OTHER_VARIABLES = (DATA_DIR_ENV, CONFIG_ENV, "PEERCRYPT_NETWORK_KEY_FILE", "PEERCRYPT_INBOX_ROOT")


def closest_variable(name: str) -> str | None:
    """The variable ``name`` most likely means (itself if it is one), or
    None. The old tool's names have no prefix: PEERCRYPT_GOSSIP_INTERVAL
    means GOSSIP_INTERVAL; a setting's key names it too (PEERCRYPT_MODE,
    MODE: DEFAULT_MODE)."""
    ours = {s.name.upper(): s.env for s in SETTINGS}
    ours.update({v.removeprefix(PREFIX): v for v in (*VARIABLES, *OTHER_VARIABLES)})
    close = difflib.get_close_matches(name.removeprefix(PREFIX), ours, n=1, cutoff=0.75)
    return ours[close[0]] if close else None


def closest_key(key: str) -> str | None:
    """The config file key that ``key`` (not one) most likely means, or
    None: a variable's name, as the .env reads it (``DEFAULT_MODE``:
    ``mode``), one a slip away from a variable's (``DEFAUT_MODE``), or
    from a key (``modee``, ``max-retries``)."""
    words = key.strip().replace("-", "_")
    if words.lower() in BY_NAME:
        return words.lower()
    variable = closest_variable(words.upper())
    if variable in VARIABLES:
        return VARIABLES[variable].name
    close = difflib.get_close_matches(words.lower(), BY_NAME, n=1, cutoff=0.75)
    return close[0] if close else None


def unknown_variable(name: str, *, bare_too: bool) -> str | None:
    """Why variable ``name`` looks like a mistake, in words (``unknown variable
    PEERCRYPT_GOSIP_INTERVAL (ignored); did you mean GOSSIP_INTERVAL?``), or
    None. A ``PEERCRYPT_*`` name is ours, so one we do not read is a typo (or
    a setting of another release); the closest name we read is suggested.
    A name without the prefix may be another program's (docker compose reads
    the same .env, a shell holds everyone's): with ``bare_too`` it counts
    only as a slip inside the name of an old variable (``GOSIP_INTERVAL``,
    ``PARALLEL_THREAD``: a letter missing, doubled, swapped or wrong), never
    as a word added at either end (``DEFAULT_MODEL`` is some other
    program's); without, never."""
    if name in VARIABLES or name in OTHER_VARIABLES:
        return None
    dashed = name.replace("-", "_").upper()
    if "-" in name and (dashed in VARIABLES or dashed in OTHER_VARIABLES):
        # (a .env's PEERCRYPT-NETWORK-KEY=... was ignored without a word)
        return f"unknown variable {name} (ignored: names take _, not -); did you mean {dashed}?"
    if name.startswith(PREFIX):
        meant = closest_variable(name)
        hint = f"; did you mean {meant}?" if meant else ""
        return f"unknown variable {name} (ignored){hint}"
    if not bare_too:
        return None
    old = [
        v
        for v in VARIABLES
        if not v.startswith(PREFIX)
        and abs(len(v) - len(name)) <= 1
        and not name.startswith(v)
        and not name.endswith(v)
    ]
    close = difflib.get_close_matches(name, old, n=1, cutoff=0.9)
    return f"unknown variable {name} (ignored); did you mean {close[0]}?" if close else None


def layer_warnings(
    dotenv: Mapping[str, str],
    dotenv_lines: Mapping[str, int],
    dotenv_path: Path,
    environ: Mapping[str, str],
) -> list[str]:
    """What a command says about its .env and environment before it runs, a
    line each (without ``peercrypt: warning: ``): each variable that looks
    like a mistake (:func:`unknown_variable`), where it is (``PATH:LINE``,
    ``environment``); and a .env holding a secret that other users may read
    (a key file so is refused; a .env is docker compose's too, made with the
    umask, and its other settings are no secret, so it is warned of).
    Nothing of a variable's value is in a line."""
    out: list[str] = []
    for key in sorted(dotenv, key=lambda k: dotenv_lines.get(k, 0)):
        why = unknown_variable(key, bare_too=True)
        if why:
            out.append(f"{dotenv_path}:{dotenv_lines.get(key, 0)}: {why}")
    for key in sorted(environ):
        why = unknown_variable(key, bare_too=False)
        if why:
            out.append(f"environment: {why}")
    held = [v for s in SETTINGS if s.kind == "secret" for v in (s.env, *s.aliases) if dotenv.get(v)]
    exposed = exposed_secret(dotenv_path, held[0]) if held else None
    return [*out, exposed] if exposed else out


def exposed_secret(path: Path, held: str) -> str | None:
    """The warning for a file that holds the secret ``held`` (a variable or
    a key, never its value) and that other users may read, without
    ``peercrypt: warning: ``; None if only its owner can (or it is gone)."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (
        f"{path} holds {held} and is accessible by other users "
        f"(mode {mode:o}); run: chmod 600 {path}"
    )


def config_file_warnings(path: Path, data: Mapping[str, Any]) -> list[str]:
    """What a command says of the config file it read (``data``: its
    settings), as :func:`layer_warnings` of a .env: a file holding a
    secret (``network_key``) that other users may read."""
    held = [s.name for s in SETTINGS if s.kind == "secret" and data.get(s.name)]
    exposed = exposed_secret(path, held[0]) if held else None
    return [exposed] if exposed else []


@dataclass(frozen=True)
class Effective:
    """The resolved settings and where each came from."""

    values: dict[str, Any]
    sources: dict[str, str]  # "default", "config file PATH", ".env PATH", "environment", "flag"

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def shown(self, name: str) -> str:
        """The value as ``config show`` prints it (secrets never)."""
        value = self.values[name]
        if BY_NAME[name].kind == "secret":
            return "(set)" if value else "(not set)"
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


def read_config_file(path: Path, *, required: bool) -> dict[str, Any]:
    """The TOML file's settings (flat keys, or under a ``[node]`` table)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:  # (its bytes are not shown: a line may hold a secret)
        raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    node = data.pop("node", {})
    if isinstance(node, dict):
        data = {**data, **node}
    for key in data:
        if key not in BY_NAME:
            close = closest_key(key)
            hint = (
                f"; did you mean {close!r}?" if close else f" (known: {', '.join(sorted(BY_NAME))})"
            )
            raise ConfigError(f"config file {path}: unknown setting {key!r}{hint}")
    return data


def resolve(
    flags: Mapping[str, Any],
    *,
    config: Mapping[str, Any],
    config_path: Path,
    dotenv: Mapping[str, str],
    dotenv_path: Path,
    environ: Mapping[str, str],
) -> Effective:
    """Resolve every setting through the five layers; ConfigError if any is invalid.

    ``flags`` holds only the settings given on the command line (already
    typed by click). AIMD window bounds not set anywhere are derived from the
    ones that are, so ``AIMD_WINDOW=32`` alone is valid.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        value, source = s.default, "default"
        if s.name in config:
            value, source = (
                _checked(s, config[s.name], f"{config_path}: {s.name}"),
                (f"config file {config_path}"),
            )
        layers = ((dotenv, f".env {dotenv_path}", f"{dotenv_path}: "), (environ, "environment", ""))
        for layer, where, prefix in layers:
            for var in (*s.aliases, s.env):  # the main name wins over an alias
                if var in layer:
                    value, source = _checked(s, layer[var], f"{prefix}{var}"), where
        if s.name in flags and flags[s.name] is not None:
            value, source = flags[s.name], "flag"
        values[s.name], sources[s.name] = value, source
    _derive_windows(values, sources)
    return Effective(values, sources)


def _checked(s: Setting, value: Any, name: str) -> Any:
    try:
        return s.parse(value)
    except ConfigError as exc:
        shown = "(hidden)" if s.kind == "secret" else f"{value!r}"
        if s.kind in ("size", "rate") and isinstance(value, str):
            shown = sizes.shown(value)
        raise ConfigError(f"{name}={shown}: {exc}") from None


def _derive_windows(values: dict[str, Any], sources: dict[str, str]) -> None:
    given = {n for n in ("aimd_window", "aimd_min_window", "aimd_max_window")
             if sources[n] != "default"}  # fmt: skip
    try:
        window, low, high = derive_windows(
            values["aimd_window"] if "aimd_window" in given else None,
            values["aimd_min_window"] if "aimd_min_window" in given else None,
            values["aimd_max_window"] if "aimd_max_window" in given else None,
            (values["aimd_window"], values["aimd_min_window"], values["aimd_max_window"]),
        )
    except PolicyError:
        described = ", ".join(
            f"{BY_NAME[n].env}={values[n]} ({sources[n]})"
            for n in ("aimd_min_window", "aimd_window", "aimd_max_window")
        )
        raise ConfigError(
            f"AIMD windows must satisfy AIMD_MIN_WINDOW <= AIMD_WINDOW <= AIMD_MAX_WINDOW "
            f"(got {described})"
        ) from None
    for name, value in (
        ("aimd_window", window),
        ("aimd_min_window", low),
        ("aimd_max_window", high),
    ):
        if value != values[name]:
            values[name], sources[name] = value, "derived"


def node_policy(eff: Effective) -> Policy:
    """The node's default transfer policy from its resolved settings
    (ConfigError also for a rate cap too low for any send: check_paced_rate)."""
    policy = Policy(
        mode=eff["mode"],
        window_kb=eff["aimd_window"],
        min_window_kb=eff["aimd_min_window"],
        max_window_kb=eff["aimd_max_window"],
        lanes=eff["parallel_threads"],
    )
    try:
        check_paced_rate(eff["max_rate"], _named("max_rate", eff))
        return policy.validated(defaults=True)  # its token-bucket: each send's -r
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


def check_ports(eff: Effective) -> None:
    """ConfigError if a node would bind its public port and its data port on
    one port (the second bind failed: "Address already in use"); 0 is any
    free port. Only where one process binds both: an attached receiver
    binds its data port on a host of its own, and a node whose receiver is
    attached (``--remote-actor receiver``) binds none."""
    port, data_port = eff["port"], eff["data_port"]
    if "receiver" in eff["remote_actors"]:
        return
    if port and port == data_port:
        raise ConfigError(
            f"{_named('port', eff)} {port} and {_named('data_port', eff)} {data_port}: "
            "the node's public port and its data port must differ"
        )


def _named(name: str, eff: Effective) -> str:
    """Setting ``name`` as the user gave it: its flag, its variable, or its
    key and the file it is in."""
    s, source = BY_NAME[name], eff.sources.get(name, "flag")
    if source == "flag" and s.flag:
        return s.flag
    if source == "default" and s.flag:
        return f"{s.flag} (default)"
    if source == "environment":
        return s.env
    if source.startswith(".env"):
        return f"{s.env} ({source})"
    return f"{name} ({source})"


def commented_config() -> str:
    """A config file listing every setting, commented out at its default."""
    lines = [
        "# PeerCrypt configuration (TOML). Uncomment a line to set it.",
        "# Precedence: defaults < this file < .env in the working directory",
        "# < environment variables < command-line flags.",
        "# `peercrypt config show` prints the effective value of each and its source.",
        "",
    ]
    for s in SETTINGS:
        if s.kind == "secret":
            lines.append(f"# {s.help} Prefer the variable {s.env} to keeping it in a file.")
        else:
            lines.append(f"# {s.help} Variable {s.env}; {s.accepted()}.")
        lines.append(f"# {s.name} = {_toml(s.default)}")
        lines.append("")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f'"{value}"'
