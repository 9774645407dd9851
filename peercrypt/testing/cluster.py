"""The compose cluster, run in network namespaces instead of containers.

:class:`NetnsCluster` reads ``docker-compose.yml`` and the ``Dockerfile``
beside it (:mod:`peercrypt.testing.compose`) and runs every container the
file describes (each replica too) as a process in its own network namespace
on one shared bridge (:class:`peercrypt.testing.netns.TestNetwork`), with:

- the container's environment (the image's ``ENV``, compose's
  ``environment`` with ``.env`` and the caller's variables filled in,
  ``HOSTNAME``);
- its volumes as directories: one per named volume (shared by the
  containers that mount it, as Docker does), one per anonymous volume and
  container; its secrets as 0400 files;
- container paths in argv and the environment (``/data``,
  ``/run/secrets/network_key``, the entrypoint) mapped to those directories
  and to the repository's files the image copies;
- names resolvable: each namespace gets ``/etc/netns/NS/hosts`` (bound over
  ``/etc/hosts`` by ``ip netns exec``) listing every container's hostname,
  container name and service name, like compose's DNS; and a default route
  through its ``eth0``, so a node on ``0.0.0.0`` advertises its address on
  the bridge, as in a container;
- the image's entrypoint and the service's command, started in service
  order; a service that another ``depends_on`` with ``service_healthy`` must
  pass the image's health check first.

Differences from Docker, on purpose: processes run as root (the namespaces
need it) with this checkout's Python; there is no image build.

:meth:`NetnsCluster.close` (also on error, and from the script's SIGINT or
SIGTERM) sends every container SIGTERM, waits its stop grace period, records
the exit codes, then deletes the namespaces and hosts files. Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from peercrypt.testing import compose
from peercrypt.testing.netns import Host, TestNetwork
from peercrypt.testing.nodes import wait_until

__all__ = ["ClusterError", "NetnsCluster", "Node"]

HEALTH_TIMEOUT = 60.0  # a service others depend on must be healthy within this
CLI_TIMEOUT = 120.0
NETNS_ETC = Path("/etc/netns")


class ClusterError(RuntimeError):
    """The cluster could not be started as the compose file says (one line)."""


@dataclass
class Node:
    """One container of the cluster, running in :attr:`host`'s namespace."""

    container: compose.Container
    host: Host
    env: dict[str, str]  # the process's environment, paths mapped
    argv: list[str]  # entrypoint + command, paths mapped
    root: Path  # this container's directory (log, anonymous volumes)
    paths: dict[str, Path]  # container path -> directory or file here
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    returncode: int | None = None
    started_at: float = 0.0  # time.monotonic() when its process was started
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.container.name

    @property
    def ip(self) -> str:
        return self.host.ip

    @property
    def data_dir(self) -> Path:
        return Path(self.env["PEERCRYPT_DATA_DIR"])

    @property
    def log_path(self) -> Path:
        return self.root / "node.log"

    def path(self, container_path: str) -> Path:
        """Where ``container_path`` (e.g. an inbox) is on this machine."""
        return Path(_map_path(container_path, self.paths))

    def cli(
        self, *args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``peercrypt ARGS`` in this container (its namespace and environment),
        as ``docker compose exec`` would run it."""
        return self.host.run([*self.exec_argv(), *map(str, args)], timeout=timeout, env=self.env)

    def exec_argv(self) -> list[str]:
        """The start of a ``peercrypt`` command line for this container."""
        return [sys.executable, "-m", "peercrypt"]

    def status(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """``peercrypt status --json`` (None if it fails)."""
        result = self.cli("status", "--json", timeout=timeout)
        if result.returncode != 0:
            return None
        value: dict[str, Any] = json.loads(result.stdout)
        return value

    def healthy(self, image: compose.Image) -> bool:
        """The image's HEALTHCHECK passes in this container."""
        check = list(image.healthcheck)
        if check and check[0] == "peercrypt":
            check = [*self.exec_argv(), *check[1:]]
        try:
            return self.host.run(check, timeout=30, env=self.env).returncode == 0
        except subprocess.TimeoutExpired:  # a loaded machine: the caller's deadline decides
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _map_path(value: str, paths: Mapping[str, Path]) -> str:
    """``value`` with a leading container path replaced by its directory here."""
    for target in sorted(paths, key=len, reverse=True):
        if value == target or value.startswith(target.rstrip("/") + "/"):
            return str(paths[target]) + value[len(target) :]
    return value


def _host_name(container: compose.Container) -> str:
    return container.name.replace("-", "_")[:32]


class NetnsCluster:
    """The containers of ``compose_file`` as namespaces (see the module docstring).

    ``scale``: replicas per service instead of ``deploy.replicas``;
    ``environ``: the variables compose would see (default: this process's
    environment; ``.env`` beside the file is read below them); ``workdir``:
    where volumes, secrets and logs go (kept after close); ``groups``: the
    containers are spread over this many bridges of the test network, round
    robin (1: one bridge, as compose's network); ``prefix``: namespace names.
    """

    def __init__(
        self,
        compose_file: Path,
        workdir: Path,
        scale: Mapping[str, int] | None = None,
        environ: Mapping[str, str] | None = None,
        groups: int = 1,
        prefix: str = "pccl",
        dockerfile: Path | None = None,
    ) -> None:
        self.compose_file = compose_file.resolve()
        self.context = self.compose_file.parent
        self.workdir = workdir.resolve()
        self.environ = dict(os.environ if environ is None else environ)
        self.image = compose.read_dockerfile(dockerfile or self.context / "Dockerfile")
        self.spec = compose.read_compose(self.compose_file, self.environ)
        self.containers = compose.containers(self.spec, self.image, scale)
        if not self.containers:
            raise ClusterError(f"{self.compose_file}: no services")
        self.network = TestNetwork(groups=groups, prefix=prefix)
        self.nodes: list[Node] = []
        self._etc_dirs: list[Path] = []
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> NetnsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NetnsCluster:
        """Create every namespace, then start the services in order."""
        try:
            self.network.start()
            self.workdir.mkdir(parents=True, exist_ok=True)
            secrets = self._secrets()
            for i, container in enumerate(self.containers):
                host = self.network.add_host(_host_name(container), i % self.network.groups)
                subprocess.run(
                    ["ip", "-n", host.ns, "route", "add", "default", "dev", host.iface],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
                self.nodes.append(self._node(container, host, secrets))
            self._write_hosts_files()
            self._start_services()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> dict[str, int | None]:
        """Stop every container (SIGTERM, its grace period, then SIGKILL),
        delete the namespaces and hosts files. Returns the exit codes by
        container name (None: it had to be killed). Idempotent."""
        if not self._closed:
            self._closed = True
            for node in self.nodes:
                if node.running and node.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        node.proc.send_signal(signal.SIGTERM)
            for node in self.nodes:
                if node.proc is None:
                    continue
                try:
                    node.returncode = node.proc.wait(node.container.stop_grace_period)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(10)
                    node.returncode = None
                if node._log is not None:
                    node._log.close()
            self.network.close(raise_errors=False)
            for directory in self._etc_dirs:
                shutil.rmtree(directory, ignore_errors=True)
        return {node.name: node.returncode for node in self.nodes}

    # -- building ------------------------------------------------------------------

    def _secrets(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        directory = self.workdir / "secrets"
        directory.mkdir(mode=0o700, exist_ok=True)
        for name, spec in (self.spec.get("secrets") or {}).items():
            if "environment" in spec:
                value = self.environ.get(spec["environment"]) or compose.read_env_file(
                    self.context / ".env"
                ).get(spec["environment"])
                if not value:
                    raise ClusterError(
                        f"secret {name}: {spec['environment']} is not set "
                        "(in the environment or .env; `peercrypt keygen` makes a network key)"
                    )
            elif "file" in spec:
                value = (self.context / spec["file"]).read_text()
            else:
                raise ClusterError(f"secret {name}: only environment or file secrets are supported")
            path = directory / name
            path.unlink(missing_ok=True)
            path.write_text(value)
            path.chmod(0o400)
            out[name] = path
        return out

    def _node(self, container: compose.Container, host: Host, secrets: dict[str, Path]) -> Node:
        root = self.workdir / "containers" / container.name
        root.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for mount in container.mounts:
            if mount.source is None:
                where = root / "volumes" / mount.target.strip("/").replace("/", "_")
            else:
                where = self.workdir / "volumes" / mount.source
            where.mkdir(parents=True, exist_ok=True, mode=0o700)
            paths[mount.target] = where
        for name, target in container.secrets.items():
            if name not in secrets:
                raise ClusterError(f"service {container.service}: unknown secret {name}")
            paths[target] = secrets[name]
        for target, source in self.image.copies.items():
            paths.setdefault(target, self.context / source)
        bin_dir = str(Path(sys.executable).parent)
        env = {key: _map_path(value, paths) for key, value in container.env.items()}
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
        env["HOME"] = str(root)
        argv = [_map_path(arg, paths) for arg in container.argv]
        return Node(container, host, env, argv, root, paths)

    def _write_hosts_files(self) -> None:
        lines = ["127.0.0.1\tlocalhost"]
        seen_services: set[str] = set()
        for node in self.nodes:
            c = node.container
            names = [c.hostname, c.name] + ([c.service] if c.service not in seen_services else [])
            seen_services.add(c.service)
            lines.append(f"{node.ip}\t{' '.join(dict.fromkeys(names))}")
        text = "\n".join(lines) + "\n"
        for node in self.nodes:
            directory = NETNS_ETC / node.host.ns
            directory.mkdir(parents=True, exist_ok=True)
            self._etc_dirs.append(directory)
            (directory / "hosts").write_text(text)

    def _start_services(self) -> None:
        must_be_healthy = {
            dep
            for spec in (self.spec.get("services") or {}).values()
            for dep, cond in _depends_on(spec.get("depends_on")).items()
            if cond == "service_healthy"
        }
        for service in self.spec["services"]:
            members = [n for n in self.nodes if n.container.service == service]
            for node in members:
                self._spawn(node)
            if service in must_be_healthy:
                for node in members:
                    self.wait_healthy(node)

    def _spawn(self, node: Node) -> None:
        node._log = open(node.log_path, "ab")  # noqa: SIM115 (closed in close())
        cwd = node.env.get("PEERCRYPT_DATA_DIR", str(node.root))
        node.started_at = time.monotonic()
        node.proc = node.host.popen(
            node.argv, env=node.env, stdout=node._log, stderr=subprocess.STDOUT, cwd=cwd
        )

    def wait_healthy(self, node: Node, timeout: float = HEALTH_TIMEOUT) -> None:
        """Wait until ``node`` passes the image's health check."""

        def healthy() -> bool:
            if not node.running:
                raise ClusterError(
                    f"{node.name} exited with {node.proc and node.proc.returncode}:\n"
                    + "\n".join(node.log_text().splitlines()[-20:])
                )
            return node.healthy(self.image)

        wait_until(healthy, timeout, f"{node.name} to be healthy", interval=0.2)

    def wait_all_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        for node in self.nodes:
            self.wait_healthy(node, timeout)

    # -- lookups ---------------------------------------------------------------------

    def service(self, name: str) -> list[Node]:
        """The containers of service ``name``."""
        return [n for n in self.nodes if n.container.service == name]

    def node(self, name: str) -> Node:
        """The container called ``name`` (e.g. ``peercrypt-peer-2``)."""
        return next(n for n in self.nodes if n.name == name)


def _depends_on(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if isinstance(value, list):
        return {str(v): "service_started" for v in value}
    return {str(k): str((v or {}).get("condition", "service_started")) for k, v in value.items()}


def parse_scale(values: Sequence[str]) -> dict[str, int]:
    """``["peer=5"]`` -> ``{"peer": 5}`` (``--scale SERVICE=N``)."""
    out: dict[str, int] = {}
    for value in values:
        service, sep, count = value.partition("=")
        if not sep or not count.isdigit():
            raise ValueError(f"--scale wants SERVICE=N, not {value!r}")
        out[service] = int(count)
    return out
