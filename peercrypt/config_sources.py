"""Where a command's settings come from, before any setting is read: the
data dir (flag > ``PEERCRYPT_DATA_DIR`` > ``.env`` > default), the config
file's path, and the working directory's ``.env``. Every command resolves
these (see ``peercrypt.cli.app``), so they live apart from the settings
table (:mod:`peercrypt.config`), which a command that only talks to a
running node never imports."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

CONFIG_FILE = "config.toml"  # in the data dir
ENV_FILE = ".env"  # in the working directory
PREFIX = "PEERCRYPT_"  # every variable of ours but the old tool's
CONFIG_ENV = "PEERCRYPT_CONFIG"
DATA_DIR_ENV = "PEERCRYPT_DATA_DIR"


class ConfigError(ValueError):
    """One line naming the variable, the value and what is accepted."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as compose reads them: ``#`` comments, optional
    ``export``, optional matching quotes around the value."""
    return parse_env_file(path)[0]


def parse_env_file(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """:func:`read_env_file`'s values, and the line each key was last set on
    (what a warning about a key names)."""
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return out, lines
    except UnicodeDecodeError:  # (none of its bytes shown: a line may hold a secret)
        raise ConfigError(f"cannot read {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            # (not the line: it may be a secret, e.g. a network key written
            # `PEERCRYPT_NETWORK_KEY: pcn1...`, as in a compose file)
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE (the line is not shown)")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key], lines[key] = value, number
    return out, lines


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/peercrypt`` (default ``~/.local/share/peercrypt``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "peercrypt"


def data_dir_from(
    flag: Path | None, environ: Mapping[str, str], dotenv: Mapping[str, str], default: Path
) -> Path:
    """The data dir: flag > environment > .env > default (it holds the config file).

    Absolute: a node started with ``--data-dir n1`` tells its inbox and
    history to commands run from elsewhere (``status``, ``--json``)."""
    if flag is not None:
        return absolute(flag)
    text = environ.get(DATA_DIR_ENV) or dotenv.get(DATA_DIR_ENV)
    return absolute(Path(text)) if text else default


def absolute(path: Path) -> Path:
    """``path`` from ``~`` or the working directory, as the system reads it:
    ``..`` kept (taken out as text, ``link/../x`` would name another place)."""
    return path.expanduser().absolute()


def config_path_from(
    flag: Path | None, environ: Mapping[str, str], dotenv: Mapping[str, str], data_dir: Path
) -> tuple[Path, bool]:
    """(path, required): ``--config``/``PEERCRYPT_CONFIG`` must exist, the default may not."""
    if flag is not None:
        return flag.expanduser(), True
    text = environ.get(CONFIG_ENV) or dotenv.get(CONFIG_ENV)
    if text:
        return Path(text).expanduser(), True
    return data_dir / CONFIG_FILE, False


def not_a_directory(path: Path) -> str:
    """Why ``path`` cannot be a data directory, "is not a directory (a
    device)", or "": it is one, or it is not there yet (it is made when
    needed). ``/dev/null`` passed click's check, which refuses only a file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return ""
    except NotADirectoryError:
        return "is not a directory (a file is on its path)"
    except OSError:
        return ""  # (no permission...: the command that uses it says so)
    kinds = ((stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    if stat.S_ISDIR(mode):
        return ""
    return f"is not a directory ({next((k for t, k in kinds if t(mode)), 'a device')})"
