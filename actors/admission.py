"""Admission actor: the node's ZAP handler (ZeroMQ RFC 27).

Every CURVE handshake on the node's public control socket asks this actor.
Policy: the network key already gates the handshake (only members can compute
the CURVE server key); an allow-list, if configured, additionally restricts
clients to the listed fingerprints. Rejections are counted (by reason), never
logged with key material.

The multicast repair port (domain ``peercrypt-repair``, no CURVE: repairs
carry their own tags) admits a connection only from an address the
``mreceiver`` named in its latest :class:`RepairSenders`: the senders of its
running sessions. Anyone else is refused before ZeroMQ reads a frame from it,
so a peer opening many connections costs nothing but the handshakes.
"""

from __future__ import annotations

from typing import Any

import zmq
import zmq.utils.z85

from peercrypt.crypto.identity import fingerprint
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.wire import codec
from peercrypt.wire.network_messages import REPAIR_DOMAIN, RepairSenders

ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class AdmissionActor(Actor):
    name = "admission"

    def __init__(self, env: ActorEnv, allow: frozenset[str]) -> None:
        super().__init__(env)
        self.allow = allow
        self.repair_senders: frozenset[str] = frozenset()

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, RepairSenders):
            self.repair_senders = frozenset(msg.hosts)
        else:
            super().on_mail(msg)

    def setup(self) -> None:
        self.zap = self.socket(zmq.REP)
        self.zap.bind(ZAP_ENDPOINT)
        self.watch(self.zap, self._on_request)

    def _on_request(self, sock: zmq.Socket[Any]) -> None:
        frames = sock.recv_multipart()
        if len(frames) < 6:
            self.count("zap-malformed")
            sock.send_multipart([b"1.0", b"", b"500", b"malformed", b"", b""])
            return
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        creds = frames[6:]
        status, text, user = b"400", b"denied", b""
        if version != b"1.0":
            status, text = b"500", b"bad version"
        elif domain == REPAIR_DOMAIN:
            if mechanism == b"NULL" and address.decode("ascii", "replace") in self.repair_senders:
                status, text = b"200", b"OK"
                self.count("repair-admitted")
            else:
                self.count("repair-denied")
        elif mechanism != b"CURVE" or len(creds) != 1 or len(creds[0]) != 32:
            self.count("denied-mechanism")
        else:
            fp = fingerprint(creds[0])
            if self.allow and fp not in self.allow:
                self.count("denied-not-allowed")
            else:
                status, text, user = b"200", b"OK", zmq.utils.z85.encode(creds[0])
                self.count("admitted")
        sock.send_multipart([b"1.0", request_id, status, text, user, b""])
