"""Receivers that misbehave on the control link a sender keeps after a send
(``IDLE_KEEP``, actors/sender.py), for tests/test_kept_links.py.

- :class:`DroppingReceiver`: a member with the network key and a fresh
  identity that proves its own key to a hello and accepts the offer, then
  closes its port at once: the sender reads the accept of a link that is no
  longer connected.
- :class:`KeptLinkRelay`: the receiver's side of the sender's control link,
  in front of a real receiver node. It relays each control message both ways
  (to the node with the sender's own identity, which the test reads from the
  sender's data dir: the node's accept proves itself to the key of the
  connection it came on), so sends through it arrive and verify; and it
  says on the sender's connection whatever the test gives it, at once
  (:meth:`KeptLinkRelay.inject`) or when the next hello arrives, before the
  node's answer (:meth:`KeptLinkRelay.before_next_answer`).

Everything goes to 127.0.0.1; every wait has a timeout.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import zmq

from peercrypt.crypto.handshake import prove_hello, respond
from peercrypt.crypto.identity import KeyPair, network_server_keys
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


class KeptLinkRelay:
    """See the module docs. :attr:`from_sender` and :attr:`from_node` hold
    every frame as it came (the node's answers in order)."""

    def __init__(self, network_key: str, node: tuple[str, int], sender: KeyPair) -> None:
        self.port_ = MemberPort(network_key, 0, b"relay")
        self.port = self.port_.port
        up = self.upstream = self.port_.ctx.socket(zmq.DEALER)
        up.linger = 0
        up.curve_serverkey = network_server_keys(network_key).z85_public
        up.curve_publickey, up.curve_secretkey = sender.z85_public, sender.z85_secret
        up.connect(f"tcp://{node[0]}:{node[1]}")
        self.port_.poller.register(up, zmq.POLLIN)
        self.from_sender: list[bytes] = []
        self.from_node: list[bytes] = []
        self.hellos = 0
        self.route = b""  # the sender's connection (its routing id here)
        self.outbox: queue.Queue[list[bytes]] = queue.Queue()
        self.on_hello: list[bytes] = []  # said before the node's answer to the next hello
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def inject(self, frames: list[bytes]) -> None:
        """Say ``frames`` on the sender's connection now (in this order)."""
        self.outbox.put(frames)

    def before_next_answer(self, frames: list[bytes]) -> None:
        """Say ``frames`` on the sender's connection as soon as its next
        hello arrives, before passing that hello on to the node."""
        with self.lock:
            self.on_hello = list(frames)

    def _say(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.port_.router.send_multipart([self.route, frame])

    def _run(self) -> None:
        router = self.port_.router
        while not self.stop.is_set():
            while self.route and not self.outbox.empty():
                self._say(self.outbox.get_nowait())
            for sock in self.port_.poll(POLL_MS):
                if sock is self.upstream:
                    data = sock.recv()
                    self.from_node.append(data)
                    router.send_multipart([self.route, data])
                    continue
                route, data = router.recv_multipart()
                self.route = route
                self.from_sender.append(data)
                if codec.decode(data).TYPE == Hello.TYPE:
                    self.hellos += 1
                    with self.lock:
                        early, self.on_hello = self.on_hello, []
                    self._say(early)
                self.upstream.send(data)

    def answers(self, kind: type[Any]) -> list[bytes]:
        """The node's answers of message type ``kind``, as they came."""
        return [raw for raw in self.from_node if codec.decode(raw).TYPE == kind.TYPE]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.upstream.close()
        self.port_.close()
