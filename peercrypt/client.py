"""Client side of a node's control socket (used by the CLI and tests).

Finds the node from ``DATA_DIR/control.json``, checks its pid is alive, and
speaks ``[token, request]`` frames to the control actor over loopback (a
``DEALER`` spoken by :mod:`peercrypt.zmtp`, without pyzmq).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

from peercrypt import errors
from peercrypt.control_file import CONTROL_FILE
from peercrypt.wire import codec
from peercrypt.wire.local_messages import ErrorReply, StatusReply, StatusRequest, StatusWait
from peercrypt.zmtp import Dealer


class NodeUnavailable(Exception):
    """No node answers on this data directory's control socket."""


class NodeRefused(NodeUnavailable):
    """The node answered a request with an error (``code``: e.g.
    ``bad-request`` for one its release does not know)."""

    def __init__(self, line: str, code: str) -> None:
        super().__init__(line)
        self.code = code


class AnotherRelease(errors.CommandError):
    """The node answers in a form this command cannot read: it runs
    another release (the package was updated while it ran). Not a node
    that is down (no NodeUnavailable: waiting or a temporary node of one's
    own would not help): a command stops at once with this one line."""

    def __init__(self, line: str) -> None:
        super().__init__(line, errors.FAILED)


class ControlClient:
    def __init__(self, endpoint: str, token: str, pid: int | None = None) -> None:
        """``pid``: the node's process, to tell a dead node from a slow one."""
        self.pid = pid
        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        if not endpoint.startswith("tcp://") or not port.isdigit():
            raise NodeUnavailable(f"no control endpoint in {endpoint!r:.80}")
        self.sock = Dealer(host, int(port))
        self.endpoint = endpoint
        self.token = token.encode()
        self._ids = itertools.count(1)
        self.last_status: StatusReply | None = None  # the latest reply of status()
        # milliseconds what is still queued may take to leave at close() (no
        # effect: what send() took is with the kernel, which delivers it)
        self.linger = 0

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> ControlClient:
        """Raises NodeUnavailable if no live node wrote a control file there."""
        return cls.from_file(data_dir / CONTROL_FILE, data_dir)

    @classmethod
    def from_file(cls, path: Path, data_dir: Path) -> ControlClient:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # never through a symlink
            with os.fdopen(fd) as f:
                info = json.load(f)
            endpoint, token, pid = info["endpoint"], info["token"], int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            raise NodeUnavailable(f"no node is running for {data_dir}") from None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise NodeUnavailable(f"the node for {data_dir} is not running (stale)") from None
        except PermissionError:
            pass
        return cls(endpoint, token, pid)

    def sibling(self) -> ControlClient:
        """Another connection to the same node: its replies apart from this
        one's (an unnamed ``ErrorReply`` is then known to be of its own)."""
        return ControlClient(self.endpoint, self.token.decode(), self.pid)

    def node_alive(self) -> bool:
        """False once the node's process is known to have ended."""
        if self.pid is None:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def next_id(self) -> int:
        return next(self._ids)

    @property
    def waiting(self) -> bool:
        """True while :meth:`receive` only waits: nothing of a reply is read yet."""
        return self.sock.waiting

    def send(self, msg: codec.Message) -> None:
        self.sock.send([self.token, codec.encode(msg, codec.LOCAL_VERSION)])

    def receive(self, timeout: float, wake: int | None = None, once: bool = False) -> codec.Message:
        """Next reply. Raises NodeUnavailable on timeout, or at once when
        descriptor ``wake`` turns readable, or (``once``) the connection
        is lost (:meth:`Dealer.recv`)."""
        data = self.sock.recv(timeout, wake, once)
        if data is None:
            raise NodeUnavailable("the node did not answer")
        try:
            reply = codec.decode(data, version=codec.LOCAL_VERSION, lenient=True)
        except codec.VersionMismatch as exc:
            theirs: int | None = exc.theirs
        except codec.DecodeError as exc:
            raise AnotherRelease(
                f"cannot read the node's reply ({exc.kind}: {exc.detail}): it runs another "
                "release of PeerCrypt than this command; restart it with this one"
            ) from None
        else:
            theirs = codec.mismatch_of(reply, codec.LOCAL_VERSION)
            if theirs is None:
                return reply
        raise AnotherRelease(
            f"the node runs another release (control protocol {theirs}, this command "
            f"{codec.LOCAL_VERSION}): restart it with this one"
        )

    def replies(self, timeout: float) -> Iterator[codec.Message]:
        while True:
            yield self.receive(timeout)

    def status(self, timeout: float = 2.0) -> StatusReply:
        request = self.next_id()
        self.send(StatusRequest(request=request))
        reply = self.receive(timeout)
        if isinstance(reply, ErrorReply):
            raise NodeUnavailable(f"the node refused: {reply.reason}")
        if not isinstance(reply, StatusReply):
            raise NodeUnavailable(f"unexpected reply {reply.TYPE}")
        self.last_status = reply
        return reply

    def status_wait(self, after: int, wait: float, wake: int | None = None) -> StatusReply:
        """The node's status once it has news since ``after`` (a reply's
        ``changes``), or after ``wait`` seconds. Raises NodeUnavailable if
        the node does not answer, its connection is lost (a control that
        restarts binds another port: the control file names it) or ``wake``
        turns readable first, NodeRefused if it refuses (``bad-request``: a
        node of an older release); the client is then to be closed (its
        reply may still come)."""
        request = self.next_id()
        self.send(StatusWait(request=request, after=after, wait=wait))
        reply = self.receive(wait + 5.0, wake, once=True)
        if isinstance(reply, ErrorReply):
            raise NodeRefused(f"the node refused: {reply.reason}", reply.code)
        if not isinstance(reply, StatusReply) or reply.request != request:
            raise NodeUnavailable(f"unexpected reply {reply.TYPE}")
        self.last_status = reply
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
