"""A node's settings: what the CLI (and later layered config) decides.

Defaults are the documented ones; every bound that keeps memory independent
of file size lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peercrypt.crypto.identity import KeyPair

CONTROL_FILE = "control.json"  # in the data dir: the control endpoint and token
MiB = 1024 * 1024
DEFAULT_PORT = 7400
DEFAULT_CHUNK = 1 * MiB
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 16 * MiB


@dataclass(frozen=True)
class NodeSettings:
    data_dir: Path
    inbox: Path
    identity: KeyPair
    server_keys: KeyPair  # the network's CURVE server key pair
    open_network: bool = False
    allow: frozenset[str] = field(default_factory=frozenset)  # fingerprints; empty: any member
    host: str = "0.0.0.0"
    port: int | None = DEFAULT_PORT  # None: no public sockets (a send-only node)
    data_port: int = 0  # 0: any free port, advertised in every Accept
    advertise_data_host: str = ""  # "": the host the sender reached
    advertise_data_port: int = 0  # 0: the bound data port
    control_port: int = 0
    control_file: Path | None = None  # None: DATA_DIR/control.json
    window: int = 16  # chunks in flight per transfer (receiver credit)
    # Bytes all incoming transfers together may have in flight (queued to be
    # written); each transfer's credit shrinks to share it, down to 1 chunk.
    receive_buffer: int = 256 * MiB
    max_outgoing: int = 16  # sends running at once; more wait in line
    max_transfers: int = 64  # incoming at once
    max_transfers_per_peer: int = 8
    idle_timeout: float = 30.0  # an incoming transfer with no traffic this long is dropped
    max_chunk: int = MAX_CHUNK
