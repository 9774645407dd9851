"""Running one command line: the CLI's entry point and every shell line.

Every error is one line ``peercrypt: error: ...`` on stderr with the exit
codes of :mod:`peercrypt.errors` (click's usage errors included, saying what
is valid); tracebacks only with ``--debug``, which may come before or after
the subcommand. Light on purpose (click only): the entry point imports it
before any command.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

import click

from peercrypt import errors

# The group's options that every command takes too (after its name): param -> flag.
GLOBAL_OPTIONS = {"data_dir": "--data-dir", "config_file": "--config"}


class NamedPath(click.Path):
    """A path option that refuses an empty value: click took ``""`` as the
    working directory (`keygen -o ""`: ". exists: not replaced";
    `--data-dir "$UNSET"` left an identity there)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            what = "a file" if self.file_okay else "a folder"
            self.fail(f"an empty path: name {what}, or leave the option out", param, ctx)
        return super().convert(value, param, ctx)


def hoist_debug(args: list[str]) -> tuple[list[str], bool]:
    """``--debug`` anywhere before ``--`` moves in front of the subcommand."""
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    if not debug:
        return args, False
    rest = [a for a in args[:end] if a != "--debug"] + args[end:]
    return ["--debug", *rest], True


def unknown_command(name: str, names: list[str]) -> str:
    """``no such command 'sned' (did you mean 'send'?); commands: ...``."""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no such command {name!r}{hint}; commands: {', '.join(names)}"


# A negative number as a user types one: -5, -1.5, -64K, -2MB/s.
NEGATIVE = r"-\d[\d.]*[A-Za-z]*(/s)?"


def usage_line(exc: click.ClickException, args: Sequence[str] = ()) -> str:
    """A click error as one line that says what is valid (``args``: the
    command line, whose words click's message may have cut)."""
    message = exc.format_message().rstrip(".")
    # click lists a choice's values a line each ("Choose from:\n\tnormal,\n\t...")
    message = re.sub(r"\.?\s*\n\s*", " ", message).replace("Choose from: ", "choose from ")
    message = re.sub(r"\. [Cc]hoose from ", "; choose from ", message)
    # click names a range type where the value is not even a number
    message = message.replace("not a valid integer range", "not a valid integer")
    message = message.replace("not a valid float range", "not a valid number")
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.NoSuchOption) and re.fullmatch(NEGATIVE, exc.option_name):
        # `max-rate -5`, `gossip interval -1`: click reads a negative number as
        # an option; no value of ours may be negative, and none is an option.
        # (click names `-1` of `-1.5`: the word as typed)
        name = exc.option_name
        words = [a for a in args if a.startswith(name) and re.fullmatch(NEGATIVE, a)]
        typed = name if name in words else next(iter(words), name)
        where = f"{ctx.command_path.split(' ', 1)[-1]}: " if ctx and ctx.parent else ""
        message = f"{where}{typed}: a negative number; no value here may be negative"
    elif isinstance(exc, click.NoSuchOption) and ctx is not None:
        near = sorted(exc.possibilities or ())
        if near:  # as a mistyped command's: the nearest, not all (`start` takes 50)
            hint = " or ".join(near)
            message = (
                f"no such option {exc.option_name!r} (did you mean {hint}?); "
                f"`{ctx.command_path} --help` lists them"
            )
        else:
            valid = sorted(
                opt for p in ctx.command.params if isinstance(p, click.Option) for opt in p.opts
            )
            message = f"{message}; `{ctx.command_path}` takes {', '.join(valid)}"
    elif message.startswith("No such command") and isinstance(ctx and ctx.command, click.Group):
        assert ctx is not None and isinstance(ctx.command, click.Group)
        wrong = re.match(r"No such command '(.*?)'", message)
        message = unknown_command(wrong[1] if wrong else "", ctx.command.list_commands(ctx))
    elif message == "Missing command" and isinstance(ctx and ctx.command, click.Group):
        assert ctx is not None
        message = f"missing command; `{ctx.command_path} --help` lists them"
    elif (
        isinstance(exc, click.UsageError)
        and ctx is not None
        and ctx.parent is not None  # not `peercrypt: error: peercrypt: ...`
        and getattr(getattr(exc, "param", None), "name", None) not in GLOBAL_OPTIONS
    ):  # a global option's error reads the same before and after the command
        message = f"{ctx.command_path.split(' ', 1)[-1]}: {message}"
    return f"peercrypt: error: {message[:1].lower()}{message[1:]}"


def execute(group: click.Group, args: list[str], prog_name: str = "peercrypt") -> int:
    """Run one command line through ``group``; return its exit code.

    Every error is one line ``peercrypt: error: ...`` on stderr (usage errors
    exit 2); tracebacks only with ``--debug``. The shell runs its commands
    through this too.
    """
    args, debug = hoist_debug(args)
    try:
        result = group.main(args=args, prog_name=prog_name, standalone_mode=False)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        # `peercrypt` or `peercrypt stats` alone: the help asked for, not an error
        # (click's message is the whole help, which read as `error: usage: ...`).
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        return errors.OK
    except click.UsageError as exc:
        click.echo(usage_line(exc, args), err=True)
        return exc.exit_code
    except click.ClickException as exc:  # UserError and the like: already one line
        click.echo(f"peercrypt: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except errors.CommandError as exc:  # e.g. the node stopped while a send ran
        click.echo(f"peercrypt: error: {exc}", err=True)
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        click.echo("peercrypt: error: interrupted", err=True)
        return 130
    except Exception as exc:
        if debug:
            raise
        click.echo(f"peercrypt: error: {exc} (run with --debug for details)", err=True)
        return errors.FAILED
    return result if isinstance(result, int) else errors.OK
