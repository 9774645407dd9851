"""What ``Dockerfile`` and ``docker-compose.yml`` describe, read without Docker.

Two readers, used by the static tests of both files and by
``scripts/netns_cluster.py``, which runs the same cluster in network
namespaces:

- :func:`read_dockerfile` gives the final stage of a Dockerfile as an
  :class:`Image`: base, user, environment, volumes, health check, entrypoint,
  command and the files copied from the build context. Only the subset of the
  Dockerfile syntax a plain Dockerfile uses: comments, ``\\`` continuations,
  JSON (exec) or shell form arguments, ``KEY=VALUE`` pairs.
- :func:`read_compose` loads a compose file the way ``docker compose config``
  would for what we use: ``.env`` beside it, then the environment, fill
  ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``
  and ``$$``; YAML merge keys (``<<``); a variable listed without a value
  passes on the value compose sees, or is left out. :func:`containers` expands each
  service into its containers (``deploy.replicas``, or a scale given), each
  with its environment, argv (entrypoint + command), volumes and secrets.

Errors a user can cause (a missing required variable, a malformed file) are
:class:`ComposeError` with one line saying what to fix.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ComposeError",
    "Container",
    "Image",
    "Mount",
    "containers",
    "interpolate",
    "read_compose",
    "read_dockerfile",
    "read_env_file",
]


class ComposeError(ValueError):
    """The Dockerfile or compose file cannot be read as written (one line)."""


# -- Dockerfile -------------------------------------------------------------------


@dataclass
class Image:
    """The final stage of a Dockerfile."""

    base: str
    stages: list[str] = field(default_factory=list)  # every FROM's image, in order
    user: str = "root"
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)  # the CMD argv
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    copies: dict[str, str] = field(default_factory=dict)  # image path -> context path
    from_stage: list[str] = field(default_factory=list)  # stages this one takes files from
    stop_signal: str = "SIGTERM"
    instructions: list[tuple[str, str]] = field(default_factory=list)  # final stage's


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def _argv(args: str) -> list[str]:
    """Exec form (a JSON array) or shell form (``/bin/sh -c``)."""
    if args.startswith("["):
        try:
            value = json.loads(args)
        except json.JSONDecodeError as exc:
            raise ComposeError(f"Dockerfile: not a JSON array: {args} ({exc.msg})") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ComposeError(f"Dockerfile: not an array of strings: {args}")
        return value
    return ["/bin/sh", "-c", args]


def _pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if len(words) >= 1 and "=" not in words[0]:  # legacy ``ENV KEY value``
        return {words[0]: " ".join(words[1:])}
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ComposeError(f"Dockerfile: expected KEY=VALUE, got {word!r}")
        out[key] = value
    return out


def _flags(args: str) -> tuple[dict[str, str], str]:
    """``--name=value`` flags at the start of an instruction, and the rest."""
    flags: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def read_dockerfile(path: Path) -> Image:
    """The final stage of the Dockerfile at ``path`` (see :class:`Image`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ComposeError(f"cannot read {path}: {exc.strerror}") from None
    args_defaults: dict[str, str] = {}
    image: Image | None = None
    stages: list[str] = []
    for line in _logical_lines(text):
        word, _, args = line.partition(" ")
        op, args = word.upper(), args.strip()
        if op == "ARG" and image is None:
            args_defaults.update(_pairs(args))
            continue
        if op == "FROM":
            _, rest = _flags(args)
            base = interpolate(rest.split()[0], args_defaults, where="Dockerfile FROM")
            stages.append(base)
            image = Image(base=base, stages=list(stages))
            continue
        if image is None:
            raise ComposeError(f"Dockerfile: {op} before the first FROM")
        image.instructions.append((op, args))
        if op == "USER":
            image.user = args
        elif op == "ENV":
            image.env.update(_pairs(args))
        elif op == "VOLUME":
            image.volumes += _argv(args) if args.startswith("[") else args.split()
        elif op == "HEALTHCHECK":
            flags, rest = _flags(args)
            image.healthcheck_options = flags
            if rest.upper().startswith("CMD "):
                image.healthcheck = _argv(rest[4:].strip())
        elif op == "ENTRYPOINT":
            image.entrypoint, image.cmd = _argv(args), []
        elif op == "CMD":
            image.cmd = _argv(args)
        elif op == "STOPSIGNAL":
            image.stop_signal = args
        elif op in ("COPY", "ADD"):
            flags, rest = _flags(args)
            *sources, target = shlex.split(rest)
            if "from" in flags:
                image.from_stage.append(flags["from"])
            else:
                for source in sources:
                    image.copies[target] = source
        elif op == "RUN":
            for mount in re.findall(r"--mount=(\S+)", args):
                options = dict(o.partition("=")[::2] for o in mount.split(","))
                if "from" in options:
                    image.from_stage.append(options["from"])
    if image is None:
        raise ComposeError(f"{path}: no FROM")
    return image


# -- compose ------------------------------------------------------------------------

_VAR_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, env: Mapping[str, str], where: str = "") -> str:
    """Fill ``$VAR``, ``${VAR}``, ``${VAR:-d}``, ``${VAR-d}``, ``${VAR:?m}``,
    ``${VAR?m}`` and ``$$`` as compose does. Raises :class:`ComposeError` for
    a required variable that is unset (or empty, with ``:?``)."""

    def fill(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        missing = not current if op in (":-", ":?") else current is None
        if not missing:
            return str(current)
        if op in ("-", ":-"):
            return arg
        if op in ("?", ":?"):
            place = f"{where}: " if where else ""
            raise ComposeError(f"{place}required variable {name} is missing: {arg}".rstrip(": "))
        return ""

    return _VAR_RE.sub(fill, value)


def _interpolate_tree(node: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, list):
        return [_interpolate_tree(item, env, where) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env, f"{where}.{key}") for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """A compose ``.env`` file: ``KEY=VALUE`` lines, ``#`` comments, optional
    ``export``, values optionally in single or double quotes. A missing file
    is empty."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ComposeError(f"{path}:{number}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def read_compose(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file at ``path``, merged and interpolated.

    Variables: ``.env`` beside the file, overridden by ``environ`` (default:
    this process's environment), as compose does.
    """
    env = {**read_env_file(path.parent / ".env"), **(os.environ if environ is None else environ)}
    filled: dict[str, Any] = _interpolate_tree(load_yaml(path), env, path.name)
    for spec in (filled.get("services") or {}).values():
        spec["environment"] = _pass_through(spec.get("environment"), env)
    return filled


def _pass_through(value: Any, env: Mapping[str, str]) -> Any:
    """A variable listed without a value (``VAR:`` or ``- VAR``) takes the
    value compose sees, or is left out of the container if it has none."""
    if isinstance(value, dict):
        return {
            k: (env[k] if v is None else v) for k, v in value.items() if v is not None or k in env
        }
    if isinstance(value, list):
        return [
            f"{v}={env[v]}" if "=" not in v else v for v in map(str, value) if "=" in v or v in env
        ]
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    """The YAML document at ``path`` (merge keys resolved, nothing filled in)."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ComposeError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ComposeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ComposeError(f"{path}: not a mapping at the top level")
    return document


@dataclass(frozen=True)
class Mount:
    """A volume of a container: ``source`` is a named volume, or None for an
    anonymous one (the image's ``VOLUME`` paths get one per container)."""

    source: str | None
    target: str


@dataclass
class Container:
    """One container of a service (replica ``index``, 1-based)."""

    service: str
    index: int
    name: str  # PROJECT-SERVICE-INDEX, as compose names it
    hostname: str
    argv: list[str]  # entrypoint + command
    env: dict[str, str]
    mounts: list[Mount]
    secrets: dict[str, str]  # secret name -> path in the container
    stop_grace_period: float = 10.0


def _environment(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in value:
        key, _, v = str(item).partition("=")
        out[key] = v
    return out


def _command(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


_DURATION_RE = re.compile(r"(?P<n>[0-9.]+)(?P<unit>h|ms|m|s|us)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def duration(value: str | int | float) -> float:
    """A compose duration (``"1m30s"``, ``"20s"``) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = _DURATION_RE.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ComposeError(f"not a duration: {value!r} (e.g. 20s, 1m30s)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def containers(
    compose: Mapping[str, Any],
    image: Image,
    scale: Mapping[str, int] | None = None,
) -> list[Container]:
    """Every container of ``compose`` (each service's ``deploy.replicas``, or
    ``scale[service]``), in service order, all built from ``image``."""
    project = str(compose.get("name") or "peercrypt")
    out: list[Container] = []
    for service, spec in (compose.get("services") or {}).items():
        count = (scale or {}).get(service)
        if count is None:
            count = int((spec.get("deploy") or {}).get("replicas", 1))
        command = _command(spec.get("command"))
        entrypoint = _command(spec.get("entrypoint"))
        argv = (image.entrypoint if entrypoint is None else entrypoint) + (
            image.cmd if command is None else command
        )
        named: list[Mount] = []
        for volume in spec.get("volumes") or []:
            if isinstance(volume, dict):
                named.append(Mount(volume.get("source"), str(volume["target"])))
            else:
                source, _, target = str(volume).partition(":")
                named.append(Mount(source, target.split(":")[0]))
        targets = {m.target for m in named}
        mounts = named + [Mount(None, v) for v in image.volumes if v not in targets]
        secrets: dict[str, str] = {}
        for secret in spec.get("secrets") or []:
            if isinstance(secret, dict):
                source = str(secret["source"])
                secrets[source] = str(secret.get("target") or f"/run/secrets/{source}")
            else:
                secrets[str(secret)] = f"/run/secrets/{secret}"
        grace = duration(spec.get("stop_grace_period", "10s"))
        for index in range(1, count + 1):
            name = f"{project}-{service}-{index}"
            hostname = str(spec.get("hostname") or name)
            env = {**image.env, "HOSTNAME": hostname, **_environment(spec.get("environment"))}
            out.append(
                Container(service, index, name, hostname, list(argv), env, mounts, secrets, grace)
            )
    return out
