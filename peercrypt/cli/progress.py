"""What a waiting ``send`` shows on stderr: one bar for the file, naming the
phase it waits in (checking the peer, waiting for a slot, for the receiver's
accept, sending, hashing what the receiver held, the receiver verifying), and
for a multicast send one line per receiver with its state and bytes.

Only on a terminal (or ``--progress``), never in ``--json`` output: the
caller decides with :func:`wanted`. tqdm is imported only when a view is
drawn (its import is a tenth of a 1 KiB send).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import termios
import time
from pathlib import Path
from typing import Any

from peercrypt.cli.echo import echo as plain_echo
from peercrypt.wire.local_messages import McTargetProgress, Progress

# What each phase of wire.local_messages.PHASES waits for, as the bar says it.
PHASE_TEXT = {
    "checking": "checking the peer",
    "walking": "reading and hashing the files",
    "waiting": "waiting for a free slot",
    "offering": "waiting for the receiver",
    "retrying": "connection lost, retrying",
    "sending": "",
    "hashing": "hashing what the receiver held",
    "verifying": "receiver verifying",
}
# Phases whose bytes mean something (the others show the bar as it was).
COUNTED = {"sending", "hashing", "verifying"}

_open_views: list[ProgressView] = []


def wanted(as_json: bool, no_progress: bool, progress: bool) -> bool:
    """Draw progress: asked for with ``--progress``, else on a terminal
    unless ``--json`` or ``--no-progress``."""
    if as_json or no_progress:
        return False
    return progress or sys.stderr.isatty()


def echo(text: str) -> None:
    """One line on stderr, above any bars drawn (they are redrawn below it)."""
    if _open_views:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        plain_echo(text, err=True)


def progress_view(paths: list[Path], show: bool) -> ProgressView | None:
    """A view of sending ``paths`` (a file, or a folder and files in one
    transfer: their size is known once the node walked them) when ``show``."""
    if not show:
        return None
    first = paths[0]
    if len(paths) == 1 and not first.is_dir():
        return ProgressView(first.name, first.stat().st_size)
    more = f" +{len(paths) - 1}" if len(paths) > 1 else ""
    return ProgressView(f"{first.name}{more}", None)


def bar_size() -> dict[str, Any]:
    """tqdm's size: the terminal's, followed as it changes; 80 x 24 on one
    that says it has no size (a serial console's, some containers' 0 x 0:
    tqdm drew no bar at all there, every bar below its 0 rows)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return {"dynamic_ncols": True}  # (not a terminal: tqdm's own choice)
    if size.columns > 0 and size.lines > 0:
        return {"dynamic_ncols": True}
    return {"ncols": size.columns or 80, "nrows": size.lines or 24}


def hide_control_echo(fd: int, keep: Any) -> None:
    """Stop the terminal at ``fd`` echoing control characters while bars
    are drawn on it; its settings to restore go to ``keep`` first (a
    callable; never called: nothing changed), so that a Ctrl-C as they
    change loses none.

    Its ``^C`` at a Ctrl-C went after the bar, which fills the line: the
    ``C`` wrapped to the next line, so the bars were cleared one line too
    low, and the last bar stayed on the screen with a ``^`` at its end
    above the "interrupted" line. Only a terminal's foreground process
    changes it (one in the background would be stopped, SIGTTOU)."""
    try:
        if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
            return
        saved = termios.tcgetattr(fd)
    except (OSError, termios.error):
        return
    if not saved[3] & termios.ECHOCTL:
        return
    quiet = list(saved)
    quiet[3] = saved[3] & ~termios.ECHOCTL
    keep(saved)
    with contextlib.suppress(OSError, termios.error):  # (restoring then: harmless)
        termios.tcsetattr(fd, termios.TCSANOW, quiet)


def restore_echo(fd: int, saved: list[Any] | None) -> None:
    """The echo of control characters :func:`hide_control_echo` turned off
    back on (after what was written to the terminal; not from the
    background, as there). Only that: whatever else changed the terminal
    since (a shell's prompt) is left as it is now."""
    if saved is None:
        return
    try:
        if os.tcgetpgrp(fd) == os.getpgrp():
            now = termios.tcgetattr(fd)
            now[3] |= termios.ECHOCTL
            termios.tcsetattr(fd, termios.TCSADRAIN, now)
    except (OSError, termios.error):
        pass


def _restore_at_exit() -> None:
    """A command ending with bars not closed (a Ctrl-C as they were made,
    before the send was followed): the terminal's echo back all the same."""
    for view in list(_open_views):
        restore_echo(view._fd, view._echo)


atexit.register(_restore_at_exit)  # (nothing to do where no view is open)


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (OSError, ValueError, AttributeError):  # (replaced by an object without one)
        return -1


class ProgressView:
    """The bars of one send; fed the node's Progress (and, for multicast,
    McTargetProgress) messages. Until :meth:`close` the terminal does not
    echo control characters (:func:`hide_control_echo`)."""

    def __init__(self, name: str, total: int | None) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._fd = _stderr_fd()
        self._echo: list[Any] | None = None
        self.targets: dict[str, Any] = {}
        self.bar: Any = None
        self.name = name
        self.phase = ""
        self.phase_since = time.monotonic()
        try:  # (a Ctrl-C as it is made: closed, the echo back; a shell goes on)
            _open_views.append(self)  # (before the echo goes: see _restore_at_exit)
            if self._fd >= 0:
                hide_control_echo(self._fd, self._keep_echo)
            self.bar = self._new_bar(name, total, 0)
        except BaseException:
            self.close()
            raise

    def _keep_echo(self, saved: list[Any]) -> None:
        self._echo = saved

    def _new_bar(self, desc: str, total: int | None, position: int, initial: int = 0) -> Any:
        return self._tqdm(
            total=total,
            initial=initial,
            unit="iB",  # the rate in binary units (MiB/s), as the result line
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            desc=desc,
            position=position,
            leave=False,
            **bar_size(),
        )

    def on_progress(self, msg: Progress) -> None:
        bar = self.bar
        if msg.phase != self.phase:
            self.phase, self.phase_since = msg.phase, time.monotonic()
            if msg.phase in COUNTED:
                # Rate and ETA per phase, of what moves in it: a new bar
                # from what the receiver held (a resume's bytes are no
                # speed, and the bar never shows 0 on its way there).
                total = msg.total_bytes or bar.total
                bar.close()
                bar = self.bar = self._new_bar(self.name, total, 0, initial=msg.done_bytes)
        text = PHASE_TEXT.get(msg.phase, msg.phase)
        if msg.phase not in COUNTED:
            text = f"{text} {time.monotonic() - self.phase_since:.0f} s"
        if msg.total_files:  # a folder or several files
            text = f"{msg.done_files}/{msg.total_files} files {text}"
        bar.set_postfix_str(text.strip(), refresh=False)
        if msg.phase in COUNTED:
            if msg.total_bytes and bar.total != msg.total_bytes:
                bar.total = msg.total_bytes
            bar.n = msg.done_bytes
        bar.refresh()

    def write(self, text: str) -> None:
        """One line on stderr above the bars."""
        echo(text)

    def on_target(self, msg: McTargetProgress) -> None:
        bar = self.targets.get(msg.target)
        if bar is None:
            position = len(self.targets) + 1
            bar = self.targets[msg.target] = self._new_bar(
                f"  {msg.target}", msg.total_bytes or None, position
            )
        bar.set_postfix_str(msg.state, refresh=False)
        bar.n = msg.done_bytes
        bar.refresh()

    def close(self) -> None:
        """The bars cleared and the echo back; once (a second call: nothing)."""
        if self not in _open_views:
            return
        try:
            for bar in [*self.targets.values(), self.bar]:
                if bar is not None:
                    bar.close()
        finally:
            if self in _open_views:
                _open_views.remove(self)
            try:
                if self._fd >= 0 and os.isatty(self._fd):
                    # The next line from the start of this one: the session's bar
                    # puts the cursor there as it closes, but a Ctrl-C as it was
                    # replaced (a new phase) left it closed, and the cursor at
                    # the end of the line the last receiver's bar cleared.
                    sys.stderr.write("\r")
                    sys.stderr.flush()
            finally:
                restore_echo(self._fd, self._echo)
                self._echo = None
