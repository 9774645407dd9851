"""A crafted control socket for tests: what a command does with answers a
real node of this release would not give (another release's, a node too
busy to check), where no real node can be made to give them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgpack
import zmq

from peercrypt.testing.nodes import LOCALHOST
from peercrypt.wire import codec

WAIT = 10.0  # s: every wait below is bounded


class FakeControl:
    """A control socket answering as a node of another release would (or as
    the test says): a ROUTER on loopback, found through
    ``DATA_DIR/control.json`` (the test's pid stands for the node's)."""

    def __init__(self, data_dir: Path) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        port = self.sock.bind_to_random_port(f"tcp://{LOCALHOST}")
        data_dir.mkdir(parents=True, exist_ok=True)
        info = {"endpoint": f"tcp://{LOCALHOST}:{port}", "token": "t0ken", "pid": os.getpid()}
        (data_dir / "control.json").write_text(json.dumps(info))
        os.chmod(data_dir / "control.json", 0o600)

    def next(self) -> tuple[bytes, str, dict[str, Any]]:
        """The next request: (route, its type, its fields)."""
        assert self.sock.poll(int(WAIT * 1000)), "no request from the command"
        route, token, frame = self.sock.recv_multipart()
        assert token == b"t0ken"
        _, type_name, fields = msgpack.unpackb(frame, raw=False)
        return route, type_name, fields

    def answer(self, route: bytes, type_name: str, fields: dict[str, Any]) -> None:
        frame = msgpack.packb([codec.LOCAL_VERSION, type_name, fields], use_bin_type=True)
        self.sock.send_multipart([route, frame])

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
