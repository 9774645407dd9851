"""A send in line for one of this node's slots that is a retry (or a busy
wait's next offer) of a file counts as that file being sent: a second send
of it to the same receiver is refused ahead of it, not started to make the
retry fail ("already sending") when its turn comes.

A real SenderActor in this process (its loop not running): what it holds
for a send in line, and its check of a new send against it."""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from actors.sender import SenderActor
from peercrypt.runtime.actor import ActorEnv
from peercrypt.testing.nodes import loopback_settings
from peercrypt.wire.local_messages import SendRequest


def _request(request: int, path: str, host: str, port: int) -> SendRequest:
    return SendRequest(request=request, path=path, host=host, port=port, chunk_size=1 << 20)


def test_a_retry_in_line_is_a_send_of_its_file(tmp_path: Path) -> None:
    settings = loopback_settings(tmp_path, None, local_ipc=False)
    context = zmq.Context()
    actor = SenderActor(ActorEnv(context=context, node_uid=f"t{time.monotonic_ns()}"), settings)
    try:
        source = b"\x01" * 32
        retry = _request(1, "/data/a/report.pdf", "127.0.0.1", 7400)
        actor.waiting.append(retry)
        actor.queued_as[1] = (source, "report.pdf")
        # The same version of the file, another path, the same receiver spelt
        # another way: the retry in line is the running send of it.
        again = _request(2, "/data/b/report.pdf", "localhost", 7400)
        assert actor._sending_already(again, source) == (1, "/data/a/report.pdf")
        # Another receiver, another version, or a plain send in line (it has
        # not read its file yet): not the same send.
        assert actor._sending_already(_request(3, retry.path, "127.0.0.1", 7401), source) is None
        assert actor._sending_already(again, b"\x02" * 32) is None
        del actor.queued_as[1]
        assert actor._sending_already(again, source) is None
    finally:
        for sock in actor._sockets:
            sock.close(linger=0)
        context.term()
