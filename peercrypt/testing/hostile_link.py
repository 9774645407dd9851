"""Receivers that misbehave on the control link a sender keeps after a send
(``IDLE_KEEP``, actors/sender.py), for tests/test_kept_links.py.

- :class:`DroppingReceiver`: a member with the network key and a fresh
  identity that proves its own key to a hello and accepts the offer, then
  closes its port at once: the sender reads the accept of a link that is no
  longer connected.

Everything goes to 127.0.0.1; every wait has a timeout.
"""

from __future__ import annotations

import os
import threading

from peercrypt.crypto.handshake import prove_hello, respond
from peercrypt.crypto.identity import KeyPair
from peercrypt.testing.member_port import MemberPort, member_message
from peercrypt.wire import codec
from peercrypt.wire.messages import Accept, Hello, HelloReply, Offer

POLL_MS = 20  # how soon the threads see a stop or a frame to inject
GO_WAIT = 30.0  # s a DroppingReceiver waits for the test's go


class DroppingReceiver:
    """Proves its own key; at the first offer sets :attr:`offered` and waits
    for :attr:`go` (the test may stop the sender meanwhile), then accepts
    (naming ``data_port``) and closes its port: the accept leaves first,
    then the connection closes. :attr:`dropped` is set once it did."""

    def __init__(self, network_key: str, data_port: int) -> None:
        self.identity = KeyPair.from_seed(os.urandom(32))
        self.data_port = data_port
        self.port_ = MemberPort(network_key, 0, b"dropping")
        self.port = self.port_.port
        self.offered, self.go = threading.Event(), threading.Event()
        self.dropped = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and not self.dropped.is_set():
            for sock in self.port_.poll(POLL_MS):
                got = member_message(sock.recv_multipart(copy=False))
                if got is None:
                    continue
                route, peer, msg = got
                if isinstance(msg, Hello):
                    proof = prove_hello(self.identity, msg.challenge, "0")
                    reply = HelloReply(node_id=self.identity.public, version="0", proof=proof)
                    self.port_.router.send_multipart([route, codec.encode(reply)])
                elif isinstance(msg, Offer):
                    self.offered.set()
                    if not self.go.wait(GO_WAIT):
                        return
                    answer = respond(msg.tid, self.identity, peer, msg.eph_pub)
                    accept = Accept(
                        tid=msg.tid, eph_pub=answer.eph_pub, static_pub=self.identity.public,
                        proof=answer.proof, data_host="", data_port=self.data_port,
                        window=16, have=[],
                    )  # fmt: skip
                    self.port_.router.send_multipart([route, codec.encode(accept)])
                    self.port_.router.close(linger=2000)
                    self.dropped.set()
                    # The connection's end waits on the ZAP handler's socket:
                    # it closes once that socket is looked at again.
                    while not self.stop.is_set():
                        self.port_.zap.poll(POLL_MS)
                    return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.port_.zap.close()
        if not self.port_.router.closed:
            self.port_.router.close()
        self.port_.ctx.term()
