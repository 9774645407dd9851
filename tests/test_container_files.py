"""The Dockerfile, docker-compose.yml and the image's entrypoint.

There is no Docker engine here, so both files are checked statically, and
what the image runs is run for real:

- docker-compose.yml is valid against the Compose Specification's JSON
  schema (vendored in tests/data) and describes what the README promises: a
  bootstrap node and scaled peers on one network, bootstrap by service name,
  named inbox volumes, the network key only as a secret from ``.env``.
- Every variable the compose file or the Dockerfile sets is one that
  ``peercrypt`` (its CLI) or the entrypoint reads; every old-tool variable
  is settable.
- The image's command, the health check and each service's command are
  valid ``peercrypt`` invocations: parsed by the CLI's own click parser,
  with the container's environment, so a bad value fails here.
- The Dockerfile: slim Python base, two stages with the wheels built in the
  first, a non-root user, the data and inbox volumes.
- The entrypoint runs a real node from the container's environment (the key
  from a secret file, an inbox per hostname), the health check passes while
  it runs, SIGTERM stops it with exit 0 well within the compose stop grace
  period, and a missing key file is one error line and exit 2.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest

from peercrypt import cli, config, config_sources
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.testing import compose
from peercrypt.testing.nodes import cli_env, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"
# Variables the old tool read (issue: "every variable of the old tool settable").
OLD_TOOL_VARIABLES = set(config.OLD_TOOL_VARIABLES)
# What the entrypoint itself reads (docker/entrypoint.sh, its header); HOSTNAME is Docker's.
ENTRYPOINT_VARIABLES = {"PEERCRYPT_NETWORK_KEY_FILE", "PEERCRYPT_INBOX_ROOT", "HOSTNAME"}
KEY_SECRET = "network_key"


def cli_variables() -> set[str]:
    """Every environment variable ``peercrypt`` reads: its click parameters'
    (the group's and every command's) and, where the layered settings table
    (``peercrypt.config.SETTINGS``) exists, each setting's variable and aliases."""
    found: set[str] = set()
    try:
        from peercrypt import config  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        for setting in config.SETTINGS:
            found.add(setting.env)
            found.update(getattr(setting, "aliases", ()))
        found.update((config_sources.DATA_DIR_ENV, config_sources.CONFIG_ENV))

    def walk(command: click.Command) -> None:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                found.add(envvar)
            elif envvar:
                found.update(envvar)
        if isinstance(command, click.Group):  # lazy groups load a command when asked
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk(sub)

    walk(cli.main)
    return found


def parse_invocation(argv: list[str], env: dict[str, str]) -> click.Context:
    """Run ``peercrypt ARGV`` through the CLI's own parser (types, ranges,
    choices and environment variables converted) without running it; return
    the subcommand's context. A bad invocation raises click's UsageError."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        top = cli.main.make_context("peercrypt", list(argv))
        with warnings.catch_warnings():  # click 8.2+: protected_args is deprecated, not gone
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*top.protected_args, *top.args]
        name, command, rest = cli.main.resolve_command(top, remaining)
        assert command is not None and name is not None
        return command.make_context(name, rest, parent=top)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def image() -> compose.Image:
    return compose.read_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def compose_file() -> dict[str, Any]:
    # No .env of the developer's and no variable of this shell: the file's own defaults.
    return compose.read_compose(COMPOSE_FILE, environ={"PEERCRYPT_NETWORK_KEY": "k"})


def entrypoint_argv(image: compose.Image, argv: list[str]) -> list[str]:
    """The peercrypt arguments the entrypoint runs for ``argv`` (it only execs
    ``peercrypt "$@"``, see test_entrypoint_is_the_repositorys_script)."""
    assert argv[0] == image.entrypoint[0]
    return argv[1:]


# -- the compose file ------------------------------------------------------------------


def schema_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_is_valid_against_the_compose_schema() -> None:
    validator = schema_validator()
    validator.validate(compose.load_yaml(COMPOSE_FILE))
    # and so is what compose makes of it once variables are filled in
    validator.validate(compose.read_compose(COMPOSE_FILE, environ={"PEERCRYPT_NETWORK_KEY": "k"}))


def test_the_schema_check_can_fail() -> None:
    validator = schema_validator()
    document = compose.load_yaml(COMPOSE_FILE)
    document["services"]["peer"]["deploy"]["replicas"] = [3]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(document)
    document = compose.load_yaml(COMPOSE_FILE)
    document["services"]["bootstrap"]["stop_grace_perod"] = "20s"
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(document)


def test_a_bootstrap_node_and_scaled_peers_on_one_network(
    compose_file: dict[str, Any], image: compose.Image
) -> None:
    services = compose_file["services"]
    assert set(services) == {"bootstrap", "peer"}
    assert services["peer"]["deploy"]["replicas"] >= 2
    for spec in services.values():
        assert spec["networks"] == ["cluster"]
        assert spec["init"] is True  # an init as PID 1 forwards SIGTERM
    assert set(compose_file["networks"]) == {"cluster"}
    boot = parse_invocation(
        entrypoint_argv(image, [image.entrypoint[0], *services["bootstrap"]["command"]]), {}
    )
    peer = parse_invocation(
        entrypoint_argv(image, [image.entrypoint[0], *services["peer"]["command"]]), {}
    )
    assert boot.info_name == peer.info_name == "node"
    # Bootstrap by service name, on the bootstrap node's port.
    assert peer.params["bootstrap_host"] == "bootstrap" in services
    assert peer.params["bootstrap_port"] == boot.params["port"]
    assert boot.params["bootstrap_host"] is None
    # Both listen on every interface and advertise their own address: no
    # --advertise-host, so the node uses its interface's address.
    for ctx in (boot, peer):
        assert ctx.params["host"] == "0.0.0.0" and not ctx.params["advertise_host"]
    assert services["peer"]["depends_on"]["bootstrap"]["condition"] == "service_healthy"


def test_every_node_has_its_inbox_on_a_named_volume(
    compose_file: dict[str, Any], image: compose.Image
) -> None:
    named = set(compose_file["volumes"])
    boxes = compose.containers(compose_file, image, scale={"peer": 3})
    assert [c.name for c in boxes] == [
        "peercrypt-bootstrap-1",
        "peercrypt-peer-1",
        "peercrypt-peer-2",
        "peercrypt-peer-3",
    ]
    inboxes = set()
    for box in boxes:
        mounts = {m.target: m.source for m in box.mounts}
        args = parse_invocation(entrypoint_argv(image, box.argv), {}).params
        if "PEERCRYPT_INBOX_ROOT" in box.env:
            root = box.env["PEERCRYPT_INBOX_ROOT"]
            inbox = f"{root}/{box.env['HOSTNAME']}"
        else:
            root = inbox = str(args["inbox"])
        assert mounts.get(root) in named, (box.name, mounts)
        inboxes.add(inbox)
        # identity and control socket: a volume of the container's own
        assert "/data" in mounts and box.env["PEERCRYPT_DATA_DIR"] == "/data"
        if mounts["/data"] is not None:
            assert box.service == "bootstrap"
    assert len(inboxes) == len(boxes)  # no two nodes share an inbox


def test_every_variable_set_is_read_and_every_old_variable_is_settable(
    compose_file: dict[str, Any], image: compose.Image
) -> None:
    readable = cli_variables() | ENTRYPOINT_VARIABLES
    assert cli_variables() >= OLD_TOOL_VARIABLES
    # as written: the variables listed, whether or not .env sets them
    for name, spec in compose.load_yaml(COMPOSE_FILE)["services"].items():
        env = compose._environment(spec["environment"])
        unknown = set(env) - readable
        assert not unknown, f"service {name} sets variables nothing reads: {sorted(unknown)}"
        assert set(env) >= OLD_TOOL_VARIABLES, name
    # what reaches a container when .env sets none of them: no empty values
    for name, spec in compose_file["services"].items():
        env = compose._environment(spec["environment"])
        assert not OLD_TOOL_VARIABLES & set(env), name
        assert all(env.values()), (name, env)
    unknown = set(image.env) - readable - {"PYTHONUNBUFFERED"}
    assert not unknown, f"the Dockerfile sets variables nothing reads: {sorted(unknown)}"


# click parameter -> the name of the same setting in the settings table
_TABLE_NAMES = {
    "default_mode": "mode",
    "no_gossip": "disable_gossip",
    "connect_timeout": "connection_timeout",
}


def node_settings(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The settings ``peercrypt ARGV`` (a ``node`` command) would run with in
    environment ``env``, by the names of the settings table: through the
    layered settings (``peercrypt.config.resolve``) where it exists, else
    through the CLI's click parser. A bad value raises click's BadParameter
    or the settings' ConfigError (a ValueError)."""
    params = parse_invocation(argv, env).params
    try:
        from peercrypt import config  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return {_TABLE_NAMES.get(k, k): v for k, v in params.items()}
    flags = {k: v for k, v in params.items() if k in config.BY_NAME and v is not None}
    here = Path("/nonexistent")
    values: dict[str, Any] = config.resolve(
        flags, config={}, config_path=here, dotenv={}, dotenv_path=here, environ=env
    ).values
    return values


def test_the_variables_are_set_from_env_and_parsed_by_the_node(image: compose.Image) -> None:
    """Values from .env reach the node's settings (and a bad one is refused,
    naming the variable)."""
    env = {
        "PEERCRYPT_NETWORK_KEY": "k",
        "DEFAULT_MODE": "aimd",
        "GOSSIP_INTERVAL": "2.5",
        "DISABLE_GOSSIP": "1",
        "HEALTH_CHECK_INTERVAL": "4",
        "MAX_RETRIES": "7",
        "CONNECTION_TIMEOUT": "1.5",
        "AIMD_WINDOW": "32",
        "AIMD_MIN_WINDOW": "4",
        "AIMD_MAX_WINDOW": "64",
        "PARALLEL_THREADS": "3",
        "MULTICAST_GROUP": "239.1.2.3:9000",
    }
    filled = compose.read_compose(COMPOSE_FILE, environ=env)
    for box in compose.containers(filled, image):
        values = node_settings(entrypoint_argv(image, box.argv), box.env)
        assert values["gossip_interval"] == 2.5 and values["disable_gossip"] is True
        assert values["health_check_interval"] == 4.0 and values["max_retries"] == 7
        assert values["connection_timeout"] == 1.5
        assert values["multicast_group"] == "239.1.2.3:9000"
        assert values["mode"] == "aimd" and values["parallel_threads"] == 3
        assert (values["aimd_window"], values["aimd_min_window"]) == (32, 4)
        assert values["aimd_max_window"] == 64
    bad = compose.read_compose(COMPOSE_FILE, environ={**env, "MAX_RETRIES": "lots"})
    box = compose.containers(bad, image)[0]
    with pytest.raises((click.BadParameter, ValueError)) as caught:
        node_settings(entrypoint_argv(image, box.argv), box.env)
    param = getattr(caught.value, "param", None)
    named = getattr(param, "envvar", None) if param is not None else str(caught.value)
    assert "MAX_RETRIES" in str(named) and "lots" in str(caught.value)


def test_the_network_key_is_only_a_secret_from_env(compose_file: dict[str, Any]) -> None:
    raw = COMPOSE_FILE.read_text()
    assert "PEERCRYPT_NETWORK_KEY:" not in raw  # never in a container's environment
    assert compose_file["secrets"] == {KEY_SECRET: {"environment": "PEERCRYPT_NETWORK_KEY"}}
    for name, spec in compose_file["services"].items():
        assert spec["secrets"] == [KEY_SECRET], name
        env = compose._environment(spec["environment"])
        assert env["PEERCRYPT_NETWORK_KEY_FILE"] == f"/run/secrets/{KEY_SECRET}"
        assert "network-key" not in " ".join(spec["command"])


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert compose.interpolate("${SET:-d}${EMPTY:-d}${UNSET:-d}", env) == "xdd"
    assert compose.interpolate("${SET-d}${EMPTY-d}${UNSET-d}", env) == "xd"
    assert compose.interpolate("$SET $$SET ${UNSET}", env) == "x $SET "
    with pytest.raises(compose.ComposeError, match="required variable EMPTY is missing: set it"):
        compose.interpolate("${EMPTY:?set it}", env)
    assert compose.interpolate("${EMPTY?set it}", env) == ""


def test_a_variable_without_a_value_passes_on_or_is_left_out() -> None:
    env = {"SET": "x", "EMPTY": ""}
    as_map = {"SET": None, "EMPTY": None, "UNSET": None, "FIXED": "y"}
    assert compose._pass_through(as_map, env) == {"SET": "x", "EMPTY": "", "FIXED": "y"}
    as_list = ["SET", "UNSET", "FIXED=y"]
    assert compose._pass_through(as_list, env) == ["SET=x", "FIXED=y"]


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# made by create_env.sh\nexport DEFAULT_MODE='qos'\nMAX_RETRIES=5\n\n"
        'PEERCRYPT_NETWORK_KEY="abc"\n'
    )
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(COMPOSE_FILE.read_text())
    filled = compose.read_compose(copy, environ={"MAX_RETRIES": "9"})
    env = filled["services"]["peer"]["environment"]
    assert env["DEFAULT_MODE"] == "qos" and env["MAX_RETRIES"] == "9"
    (tmp_path / ".env").write_text("not a pair\n")
    with pytest.raises(compose.ComposeError, match=r"\.env:1: expected KEY=VALUE"):
        compose.read_compose(copy, environ={})


# -- the Dockerfile ----------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_a_slim_python(image: compose.Image) -> None:
    assert len(image.stages) == 2
    for base in image.stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base
    build = DOCKERFILE.read_text().split("FROM ", 2)[1]
    assert "AS build" in build and "pip wheel" in build  # the wheels are built once, there
    assert image.from_stage == ["build"]
    install = next(args for op, args in image.instructions if op == "RUN" and "pip" in args)
    assert "--no-index" in install and "--find-links=/wheels" in install
    assert "gcc" not in DOCKERFILE.read_text()


def test_dockerfile_runs_as_a_non_root_user(image: compose.Image) -> None:
    user = image.user.split(":")[0]
    assert user not in ("root", "0", "")
    ops = [op for op, _ in image.instructions]
    creates = next(
        i for i, (op, args) in enumerate(image.instructions) if "useradd" in args and op == "RUN"
    )
    assert "useradd --system --uid 10001 --gid peercrypt" in image.instructions[creates][1]
    assert creates < ops.index("USER") < ops.index("ENTRYPOINT")


def test_dockerfile_volumes_health_check_and_command(image: compose.Image) -> None:
    assert image.env["PEERCRYPT_DATA_DIR"] == "/data"
    node = parse_invocation(entrypoint_argv(image, [*image.entrypoint, *image.cmd]), image.env)
    assert node.info_name == "node"
    assert set(image.volumes) == {"/data", str(node.params["inbox"])}
    assert node.params["host"] == "0.0.0.0" and node.params["port"] == 7400
    assert "EXPOSE" in [op for op, _ in image.instructions]
    health = image.healthcheck
    assert health[0] == "peercrypt"
    assert parse_invocation(health[1:], image.env).info_name == "status"
    assert compose.duration(image.healthcheck_options["timeout"]) <= 10
    assert image.stop_signal == "SIGTERM"


def test_entrypoint_is_the_repositorys_script(image: compose.Image) -> None:
    assert image.copies[image.entrypoint[0]] == "docker/entrypoint.sh"
    text = ENTRYPOINT.read_text()
    assert text.rstrip().splitlines()[-1] == 'exec peercrypt "$@"'
    read = set(re.findall(r"\$\{?([A-Z_]+)", text))
    assert read == ENTRYPOINT_VARIABLES | {"PEERCRYPT_NETWORK_KEY"}
    assert os.access(ENTRYPOINT, os.X_OK)


def test_parse_invocation_rejects_what_peercrypt_would() -> None:
    with pytest.raises(click.UsageError):
        parse_invocation(["node", "--port", "70000"], {})
    with pytest.raises(click.UsageError):
        parse_invocation(["nod"], {})
    with pytest.raises(click.UsageError):
        parse_invocation(["node", "--bootstrap-prt", "1"], {})


# -- the entrypoint with a real node ------------------------------------------------------


@pytest.fixture
def container_env(tmp_path: Path, network_key: str) -> Iterator[dict[str, str]]:
    key_file = tmp_path / "secrets" / KEY_SECRET
    key_file.parent.mkdir()
    key_file.write_text(network_key + "\n")
    key_file.chmod(0o400)
    yield cli_env(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PEERCRYPT_DATA_DIR": str(tmp_path / "data"),
            "PEERCRYPT_NETWORK_KEY_FILE": str(key_file),
            "PEERCRYPT_INBOX_ROOT": str(tmp_path / "inboxes"),
            "HOSTNAME": "peer-7",
        }
    )


def _status(data_dir: Path) -> dict[str, str] | None:
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            facts = client.status(timeout=1.0).node
    except NodeUnavailable:
        return None
    return facts if "inbox" in facts and "port" in facts else None


def test_entrypoint_runs_a_node_that_stops_cleanly_on_sigterm(
    container_env: dict[str, str], image: compose.Image, compose_file: dict[str, Any]
) -> None:
    data_dir = Path(container_env["PEERCRYPT_DATA_DIR"])
    argv = [str(ENTRYPOINT), "node", "--host", "127.0.0.1", "--port", "0"]
    log = data_dir.parent / "node.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=container_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        facts = wait_until(lambda: proc.poll() is None and _status(data_dir), 20, "the node")
        assert facts["inbox"] == str(Path(container_env["PEERCRYPT_INBOX_ROOT"]) / "peer-7")
        # exec: the node is the entrypoint's process, no shell in between
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"peercrypt" in b" ".join(cmdline) and b"/bin/sh" not in cmdline[0]
        secret = Path(container_env["PEERCRYPT_NETWORK_KEY_FILE"]).read_text().strip()
        assert secret.encode() not in b" ".join(cmdline)
        health = subprocess.run(
            image.healthcheck, env=container_env, capture_output=True, timeout=30
        )
        assert health.returncode == 0, health.stderr

        grace = min(c.stop_grace_period for c in compose.containers(compose_file, image))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=grace)
        assert code == 0, log.read_text()
        assert time.monotonic() - started < grace / 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text()
    health = subprocess.run(image.healthcheck, env=container_env, capture_output=True, timeout=30)
    assert health.returncode == 1  # unhealthy once stopped


def test_entrypoint_takes_the_old_tools_command_line(container_env: dict[str, str]) -> None:
    """`docker run -it peercrypt python src/cli.py --mode aimd` (the old
    README's line) runs `peercrypt start --mode aimd`; it said "no such
    command 'python'"."""
    result = subprocess.run(
        [str(ENTRYPOINT), "python", "src/cli.py", "--mode", "aimd", "--help"],
        env=container_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: peercrypt start "), result.stdout


def test_entrypoint_without_a_readable_key_file_is_one_error(
    container_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**container_env, "PEERCRYPT_NETWORK_KEY_FILE": str(tmp_path / "missing")}
    result = subprocess.run(
        [str(ENTRYPOINT), "node", "--host", "127.0.0.1", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"peercrypt: error: PEERCRYPT_NETWORK_KEY_FILE: cannot read {tmp_path / 'missing'}"
    ]
