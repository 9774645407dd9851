"""What the command groups share: the one-line user error, identity and
network-key handling, reaching the data dir's node (or a temporary one).
Following a request's progress to its result is :mod:`peercrypt.cli.follow`.

Every user-caused error ends in one line ``peercrypt: error: ...`` and a
non-zero exit code (see :mod:`peercrypt.errors`); tracebacks only with
``--debug``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click
import zmq

from peercrypt import config, errors, sizes
from peercrypt.cli.runner import NamedPath
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.address import visible_ascii
from peercrypt.crypto.identity import (
    IdentityError,
    load_or_create_identity,
    network_server_keys_later,
    normalise_fingerprint,
)
from peercrypt.settings import NodeSettings
from peercrypt.wire.text import printable

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """One line to the user and an exit code."""

    def __init__(self, message: str, exit_code: int = errors.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"peercrypt: error: {self.format_message()}", err=True)


def load_identity(data_dir: Path) -> Any:
    try:
        return load_or_create_identity(data_dir)
    except IdentityError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot use data directory {data_dir}: {exc.strerror}") from None


def server_keys(network_key: str | None, open_network: bool) -> Any:
    """The network's CURVE server keys. The key comes from ``--network-key``
    (warned about: argv is visible to every local user), else
    ``--network-key-file``, else the settings' layers (PEERCRYPT_NETWORK_KEY),
    else a prompt when stdin is a terminal."""
    return server_keys_later(network_key, open_network)()


def server_keys_later(network_key: str | None, open_network: bool) -> Callable[[], Any]:
    """:func:`server_keys`, the key found and checked now (UserError), its
    derivation run in a thread meanwhile: the returned call waits for it."""
    ctx = click.get_current_context(silent=True)
    in_argv = ctx is not None and given(ctx, "network_key")
    from_file = ctx.meta.get("network_key_file") if ctx is not None else None
    if from_file is not None and not in_argv:
        network_key = from_file
    if open_network and network_key:
        raise UserError(
            "--open and a network key exclude each other (unset PEERCRYPT_NETWORK_KEY "
            "or PEERCRYPT_OPEN, or pass --no-open; see `peercrypt config show`)"
        )
    if not open_network and not network_key and sys.stdin.isatty():
        network_key = click.prompt("network key", hide_input=True, err=True)
        if ctx is not None:  # (`start`'s prompt: `config show` says it is set)
            ctx.meta["network_key_typed"] = network_key
    if not open_network and not network_key:
        raise UserError(
            "no network key: pass --network-key-file (or set PEERCRYPT_NETWORK_KEY; "
            "`peercrypt keygen` makes one), or --open for an unauthenticated local try"
        )
    try:
        return network_server_keys_later(None if open_network else network_key)
    except ValueError as exc:
        raise UserError(str(exc)) from None


# True while the shell runs a line (shell.py, in its job threads too): a
# --network-key typed at its prompt or read from its script is in no
# process's command line.
from_shell: contextvars.ContextVar[bool] = contextvars.ContextVar("from_shell", default=False)


def warn_key_in_argv(ctx: click.Context | None = None) -> None:
    """One warning line when the network key was given on the command line."""
    if from_shell.get():
        return
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is not None and given(ctx, "network_key") and ctx.params.get("network_key"):
        click.echo(
            "peercrypt: warning: --network-key puts the key in the command line, visible "
            "to every local user (ps); use --network-key-file or PEERCRYPT_NETWORK_KEY",
            err=True,
        )


def _read_key_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """``--network-key-file``: the key's first line; the file must be private."""
    if value is None:
        return
    try:
        info = value.stat()
        # A file, or a pipe (`--network-key-file <(pass show key)`); not a
        # device, whose mode says nothing of the key (`chmod 600 /dev/null`).
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
            kind = "a socket" if stat.S_ISSOCK(info.st_mode) else "a device"
            raise UserError(f"network key file {value} is not a regular file ({kind})")
        mode = info.st_mode & 0o777
        with open(value, encoding="utf-8") as f:
            key = f.readline(4096).strip()
    except (OSError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise UserError(f"cannot read network key file {value}: {detail}") from None
    if mode & 0o077:
        raise UserError(
            f"{value} is accessible by other users (mode {mode:o}); run: chmod 600 {value}"
        )
    if not key:
        raise UserError(f"network key file {value} is empty")
    ctx.meta["network_key_file"] = key


def allow_list(values: tuple[str, ...]) -> frozenset[str]:
    try:
        return frozenset(normalise_fingerprint(v) for v in values)
    except ValueError as exc:
        raise UserError(str(exc)) from None


class ByteSize(click.ParamType):  # type: ignore[type-arg]  # (generic from click 8.2 on)
    """A byte count (``rate``: bytes per second) as :mod:`peercrypt.sizes`
    reads it (``512``, ``64K``, ``1.5M``, ``2GiB``, ``10MB``; a rate also
    ``100M/s``) within [low, high]. A bad value is click's usage error
    (exit 2), one line: the option, the value, why, the range in human units."""

    def __init__(self, low: float | None = None, high: float | None = None, rate: bool = False):
        self.low, self.high, self.rate = low, high, rate
        self.name = "rate" if rate else "size"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return self.name.upper()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return sizes.checked(value, self.low, self.high, rate=self.rate)
        except ValueError as exc:
            self.fail(f"{sizes.shown(value)}: {exc}", param, ctx)


# What a size option's help adds.
SIZE_HELP = "Takes suffixes: 64K, 1.5M, 2GiB (1024); 10MB (1000)."
RATE_HELP = "Takes suffixes: 64K, 1.5M, 2GiB (1024); 10MB (1000); /s optional."


class Fingerprints(click.ParamType):  # type: ignore[type-arg]  # (generic from click 8.2 on)
    """Node fingerprints, comma-separated as in the variable (``--allow A,B``,
    what ``config show`` prints), each with or without dashes, any case;
    normalised. Empty text is none. Another text is click's usage error
    naming the option (exit 2), as a variable or .env naming one is the
    settings' (peercrypt/config.py)."""

    name = "fingerprint"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "FINGERPRINT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(normalise_fingerprint(v) for v in str(value).split(",") if v.strip())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _joined(ctx: click.Context, param: click.Parameter, values: tuple[Any, ...]) -> tuple[str, ...]:
    """A list setting's option as its variable reads it: repeated or
    comma-separated (``--allow A,B`` is ``--allow A --allow B``), empty items
    dropped, so that ``--allow ""`` is the empty list and undoes a list that
    .env, the environment or the config file set."""
    out: list[str] = []
    for value in values:
        items = value if isinstance(value, tuple) else str(value).split(",")
        out += [item.strip() for item in items if item.strip()]
    return tuple(dict.fromkeys(out))


class OptionalArgument(click.Argument):
    """An argument that may be left out: ``[NAME]`` (its metavar) in the
    usage line, but ``NAME`` in the error about its value."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return f"'{(self.name or '').upper()}'"


def setting_option(name: str, param: str | None = None) -> Callable[[F], F]:
    """The click option of a setting of :data:`peercrypt.config.SETTINGS`.

    It has no default of its own: a value only when given on the command
    line, so :func:`effective` can layer it over file, .env and environment.
    """
    s = config.BY_NAME[name]
    kw: dict[str, Any] = {"default": None, "help": f"{s.help} [env {s.env}]"}
    if s.kind != "secret":
        kw["show_default"] = config.Effective({name: s.default}, {}).shown(name) or '""'
    if s.kind == "int":
        kw["type"] = click.IntRange(
            None if s.low is None else int(s.low), None if s.high is None else int(s.high)
        )
    elif s.kind == "float":
        kw["type"] = FiniteRange(s.low, s.high)
    elif s.kind in ("size", "rate"):
        kw["type"] = ByteSize(s.low, s.high, rate=s.kind == "rate")
    elif s.kind == "bool":  # a setting on by default has its --no- flag too
        kw.update(is_flag=True, show_default="on" if s.default else False)
    elif s.kind == "choice":
        kw["type"] = click.Choice(s.choices, case_sensitive=False)
    elif s.kind == "list":
        kw.update(multiple=True, show_default=False, callback=_joined)
    elif s.kind == "fingerprints":
        kw.update(multiple=True, show_default=False, type=Fingerprints(), callback=_joined)
    elif s.kind == "host":
        kw["type"] = HostText(empty_ok=s.empty_ok)
    elif s.kind == "group":
        kw["type"] = GroupText()
    if s.kind in ("size", "rate"):
        kw["help"] = f"{s.help} {RATE_HELP if s.kind == 'rate' else SIZE_HELP} [env {s.env}]"
    elif s.unit:
        kw["help"] = f"{s.help} Unit: {s.unit}. [env {s.env}]"
    return click.option(s.flag, param or name, **kw)


def given(ctx: click.Context, param: str) -> bool:
    """Whether ``param`` was given on the command line."""
    return ctx.get_parameter_source(param) == click.core.ParameterSource.COMMANDLINE


def given_flags(ctx: click.Context, names: dict[str, str]) -> dict[str, Any]:
    """{setting: value} of the setting options given; ``names`` maps setting -> param."""
    out: dict[str, Any] = {}
    for setting, param in names.items():
        if given(ctx, param):
            value = ctx.params[param]
            out[setting] = value.lower() if isinstance(value, str) and setting == "mode" else value
    return out


def effective(obj: dict[str, Any], flags: dict[str, Any]) -> config.Effective:
    """The settings of this invocation: defaults < config file < .env < environment < flags."""
    from peercrypt.cli.echo import warn_once

    try:
        from_file = config.read_config_file(obj["config_path"], required=obj["config_required"])
        for line in config.config_file_warnings(obj["config_path"], from_file):
            warn_once(line)
        return config.resolve(
            flags,
            config=from_file,
            config_path=obj["config_path"],
            dotenv=obj["dotenv"],
            dotenv_path=obj["dotenv_path"],
            environ=obj["environ"],
        )
    except config.ConfigError as exc:
        raise UserError(str(exc)) from None


key_file_option = click.option(
    "--network-key-file",
    type=NamedPath(dir_okay=False, path_type=Path),
    expose_value=False,
    callback=_read_key_file,
    help="Read the network key from this file (mode 0600).",
)


def network_key_option(f: F) -> F:
    """The ``network_key`` setting's option, and ``--network-key-file``."""
    f = key_file_option(f)
    return setting_option("network_key")(f)


open_option = setting_option("open", "open_network")


def check_resolvable(host: str, port: int) -> None:
    """UserError (exit 3) when ``host`` does not resolve: otherwise the node
    would only ever see its connection attempts fail."""
    try:
        socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise UserError(f"cannot resolve host {host!r}: {reason}", errors.UNREACHABLE) from None


class Startable(Protocol):
    def start(self) -> None: ...


N = TypeVar("N", bound=Startable)


def start_node(node_: N, where: str) -> N:
    """Start a node (or an attached actor); a failure is one UserError line."""
    from peercrypt.runtime.supervisor import StartError  # the runtime: only a starting node

    try:
        node_.start()
    except zmq.ZMQError as exc:
        raise UserError(f"cannot listen on {where}: {exc.strerror}") from None
    except StartError as exc:
        raise UserError(str(exc), errors.USAGE if exc.user_error else errors.FAILED) from None
    return node_


def wait_for_facts(client: ControlClient, keys: tuple[str, ...]) -> dict[str, str]:
    deadline = time.monotonic() + 5.0
    while True:
        facts = client.status().node
        if all(k in facts for k in keys) or time.monotonic() > deadline:
            return facts
        time.sleep(0.05)


@contextlib.contextmanager
def local_node(
    obj: dict[str, Any], network_key: str | None, open_network: bool
) -> Iterator[ControlClient]:
    """The running node of this data dir, or a temporary send-only node.

    ``network_key``/``open_network`` are the command-line values (``None``,
    and ``open_network`` unless ``--open`` or ``--no-open`` was given: the
    temporary node takes them from the settings layers).
    """
    warn_key_in_argv()
    ctx = click.get_current_context(silent=True)
    # --open and --no-open: the flag wins over the layers below; neither: they decide.
    open_flag = open_network if ctx is not None and given(ctx, "open_network") else None
    data_dir: Path = obj["data_dir"]
    try:
        client = ControlClient.for_data_dir(data_dir)
        try:
            client.status(timeout=2.0)
        except NodeUnavailable:
            client.close()
            raise
    except NodeUnavailable:
        pass
    else:
        from_file = ctx.meta.get("network_key_file") if ctx is not None else None
        if network_key is not None or from_file is not None or open_flag is not None:
            click.echo(
                "peercrypt: note: sending through the running node, on its network "
                "(--network-key, --network-key-file and --open apply only when no node runs)",
                err=True,
            )
        with client:
            yield client
        return
    flags: dict[str, Any] = {"network_key": network_key, "open": open_flag}
    settings_ = effective(obj, flags)
    try:
        policy = config.node_policy(settings_)
    except config.ConfigError as exc:
        raise UserError(str(exc)) from None
    import tempfile  # (with shutil, bz2, lzma) only when no node runs

    with tempfile.TemporaryDirectory(prefix="peercrypt-") as tmp:
        control_file = Path(tmp) / "control.json"
        identity = load_identity(data_dir)
        keys = server_keys_later(settings_["network_key"] or None, settings_["open"])
        # The actors, only when no node runs: imported while the key's scrypt runs.
        from peercrypt.node import Node

        settings = NodeSettings(
            data_dir=data_dir,
            inbox=data_dir / "inbox",
            identity=identity,
            server_keys=keys(),
            open_network=settings_["open"],
            policy=policy,
            port=None,
            control_file=control_file,
        )
        temporary = start_node(Node(settings), "loopback")
        try:
            with ControlClient.from_file(control_file, data_dir) as client:
                yield client
        finally:
            temporary.stop()


class FiniteRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf`` (which
    pass its bounds: every comparison with ``nan`` is false, so a ``--timeout
    nan`` made every later wait end at once or never)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class HostText(click.ParamType):  # type: ignore[type-arg]  # (generic from click 8.2 on)
    """A host name or address: visible ASCII without a blank (it goes into
    this node's signed member record, which others show to their users)."""

    name = "host"

    def __init__(self, empty_ok: bool = False) -> None:
        self.empty_ok = empty_ok  # (its setting says what an empty one means)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text and not self.empty_ok:
            self.fail("an empty host: expected a host name or address", param, ctx)
        if text and not visible_ascii(text):
            self.fail(f"'{printable(text)}' is not a host name or address", param, ctx)
        return text


class GroupText(click.ParamType):  # type: ignore[type-arg]  # (generic from click 8.2 on)
    """A multicast GROUP:PORT as the node takes it (core/fragments.py,
    parse_group), or empty: refused as the flag wherever it is given
    (`config show` showed what only the node refused)."""

    name = "group"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip()
        if text:
            from peercrypt.core.fragments import parse_group  # (only when one is given)

            try:
                parse_group(text)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        return text


def typed_row(
    row: dict[str, str], counts: tuple[str, ...], numbers: tuple[str, ...]
) -> dict[str, object]:
    """A node's row of text for `--json`: ``counts`` as integers, ``numbers``
    as non-negative finite floats; a value that is neither (not known yet,
    another build's) is null. The other fields as they are."""
    shown: dict[str, object] = dict(row)
    for key in counts:
        if key in row:
            text = row[key]
            shown[key] = int(text) if text.isascii() and text.isdigit() else None
    for key in numbers:
        if key in row:
            try:
                value = float(row[key])
            except ValueError:
                value = math.nan
            shown[key] = value if math.isfinite(value) and value >= 0 else None
    return shown


def count_in(text: object) -> int:
    """A count a transfer's row gives as text (bytes, size): 0 when it is
    not one (a walk's size ``?``, a superscript digit, a negative, none):
    rows come from the sender and the msender, maybe attached from
    elsewhere and of another build."""
    try:
        return max(0, int(str(text)))
    except ValueError:
        return 0


def terminal_width() -> int | None:
    """The terminal's columns when stdout is one, else None (a pipe, a file:
    tables keep every column and every character there)."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def fit_columns(
    natural: dict[str, int],
    width: int | None,
    shrink: Mapping[str, int] | None = None,
    drop: tuple[str, ...] = (),
) -> dict[str, int]:
    """The columns of a table (name -> its width, in order) within ``width``
    (two cells between columns; None: no limit): the columns of ``shrink``
    are narrowed, down to their minimum there, then the columns of ``drop``
    are left out in that order until the rest fit; room left over goes back
    to the narrowed ones, first first. ``natural``: each column's widest cell
    (a column of ``shrink`` or ``drop`` it lacks is none of this table's)."""
    widths = dict(natural)

    def total() -> int:
        return sum(widths.values()) + 2 * (len(widths) - 1)

    if width is None or total() <= width:
        return widths
    shrink = {name: least for name, least in (shrink or {}).items() if name in natural}
    for name, least in shrink.items():
        widths[name] = min(natural[name], least)
    for name in drop:
        if total() <= width:
            break
        widths.pop(name, None)
    for name in shrink:
        if name in widths:
            widths[name] += max(0, min(width - total(), natural[name] - widths[name]))
    return widths


def table(
    headers: list[str],
    rows: list[list[str]],
    *,
    width: int | None = None,
    shrink: Mapping[str, int] | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    """Left-aligned columns under upper-case headers, two spaces apart.

    Given ``width`` (:func:`terminal_width`), a wider table is fitted to it
    (:func:`fit_columns`); ``…`` ends a cut cell.
    """
    natural = {h: max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)}
    least = {h: max(n, len(h)) for h, n in (shrink or {}).items()}
    widths = fit_columns(natural, width, least, drop)
    columns = [(headers.index(h), w) for h, w in widths.items()]

    def cell(text: str, w: int) -> str:
        return (text if len(text) <= w else text[: w - 1] + "…").ljust(w)

    lines = ["  ".join(h.upper().ljust(w) for h, w in widths.items())]
    lines += ["  ".join(cell(r[i], w) for i, w in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
