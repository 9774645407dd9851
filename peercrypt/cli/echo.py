"""``click.echo`` for the commands' fast path, without loading click for a
plain line (:mod:`peercrypt.cli.fast`)."""

from __future__ import annotations

import sys


def echo(text: str, err: bool = False) -> None:
    """``click.echo(text, err=err)``; click is loaded only for a line it
    would change (escape sequences it strips off a terminal, characters the
    stream cannot encode)."""
    stream = sys.stderr if err else sys.stdout
    encoding = (getattr(stream, "encoding", "") or "").lower().replace("-", "")
    plain = text.replace("\n", "").isprintable()
    if plain and (text.isascii() or encoding == "utf8"):
        stream.write(f"{text}\n")
        stream.flush()
        return
    import click

    click.echo(text, err=err)


# The warnings already printed by this process: a shell runs each of its
# lines through the group, and says each once, as a command does.
_WARNED: set[str] = set()


def warn_once(line: str) -> None:
    """``peercrypt: warning: LINE`` on stderr, unless this process said it."""
    if line not in _WARNED:
        _WARNED.add(line)
        echo(f"peercrypt: warning: {line}", err=True)
