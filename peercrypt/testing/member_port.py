"""A node's public port as a test plays it (an admitted member's, for
tests/test_trust_e2e.py and tests/test_health_reuse.py).

:class:`MemberPort` is a CURVE server ROUTER with the network's server key
on 127.0.0.1, in a ZeroMQ context of its own whose ZAP handler admits every
client and names its CURVE key (so each frame carries ``User-Id``, as a
node's gateway sees it). :meth:`MemberPort.poll` answers the ZAP requests
itself and returns the other sockets that are ready. :func:`proven_hello`
is what any member learns of a node by asking it a hello.
"""

from __future__ import annotations

from typing import Any

import zmq

from peercrypt.crypto.handshake import HelloChallenge
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.testing.nodes import LOCALHOST
from peercrypt.wire import codec
from peercrypt.wire.messages import Hello, HelloReply


def proven_hello(host: str, port: int, network_key: str) -> HelloReply:
    """The node's answer to a challenge of ours, from a fresh identity; its
    proof verified (AssertionError if none comes within 10 s, ProofError if
    it does not prove the key it names)."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    me = KeyPair.generate()
    sock.linger = 0
    sock.curve_serverkey = network_server_keys(network_key).z85_public
    sock.curve_publickey, sock.curve_secretkey = me.z85_public, me.z85_secret
    try:
        sock.connect(f"tcp://{host}:{port}")
        challenge = HelloChallenge()
        sock.send(codec.encode(Hello(challenge=challenge.public)))
        assert sock.poll(10_000), f"no hello reply from {host}:{port}"
        reply = codec.decode_as(sock.recv(), HelloReply)
        challenge.verify(reply.node_id, reply.version, reply.proof, reply.offer_key)
        return reply
    finally:
        sock.close()
        ctx.term()


def member_message(frames: list[zmq.Frame]) -> tuple[bytes, bytes, codec.Message] | None:
    """What a :class:`MemberPort`'s router received (``recv_multipart(copy=False)``):
    the connection's routing id, the peer's CURVE key and the message; None
    if it does not decode."""
    route, frame = frames[0].bytes, frames[-1]
    peer = zmq.utils.z85.decode(str(frame.get("User-Id")))
    try:
        return route, peer, codec.decode(frame.bytes)
    except codec.DecodeError:
        return None


class MemberPort:
    def __init__(self, network_key: str, port: int = 0, domain: bytes = b"member") -> None:
        """Listen on ``port`` (0: any free one; :attr:`port` says which)."""
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.linger = 0
        self.zap.bind("inproc://zeromq.zap.01")
        server = network_server_keys(network_key)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.curve_server = True
        self.router.zap_domain = domain
        self.router.curve_secretkey = server.z85_secret
        self.router.curve_publickey = server.z85_public
        if port:
            self.router.bind(f"tcp://{LOCALHOST}:{port}")
            self.port = port
        else:
            self.port = self.router.bind_to_random_port(f"tcp://{LOCALHOST}")
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.zap, zmq.POLLIN)

    def poll(self, timeout_ms: int) -> list[zmq.Socket[Any]]:
        """Wait up to ``timeout_ms`` for the router (or a socket added with
        ``self.poller.register``); ZAP requests are answered here."""
        ready = []
        for sock, _ in self.poller.poll(timeout_ms):
            if sock is self.zap:
                req = self.zap.recv_multipart()
                user = zmq.utils.z85.encode(req[6]) if len(req) > 6 else b""
                self.zap.send_multipart([b"1.0", req[1], b"200", b"OK", user, b""])
            else:
                ready.append(sock)
        return ready

    def close(self) -> None:
        """Close the router and the ZAP handler, and end the context (close
        any socket of your own made in :attr:`ctx` first)."""
        self.router.close()
        self.zap.close()
        self.ctx.term()
