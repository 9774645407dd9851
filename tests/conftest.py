"""Shared fixtures for end-to-end tests with real node processes.

- ``network_key``: a fresh random network key per test.
- ``node_factory(*extra_args, network_key=..., open_network=False, name=None,
  env=None, start=True) -> NodeProcess``: nodes in ``tmp_path`` on 127.0.0.1
  with ``--port 0``; all are stopped at teardown, and every node the test did
  not ``kill()`` must exit with code 0 on SIGTERM.
- ``make_file(size, name=None, directory=None) -> Path``: a file of random bytes.
- ``blake3_file(path) -> str``: hex BLAKE3 of a file.
- ``free_port``: a loopback port that refuses connections for the whole test.
- ``small_disk(size) -> Path``: a tmpfs of that size (a disk that fills);
  ``small_inbox``: one of 24 MiB.
- ``small_ext4(size_bytes) -> Path``: a real ext4 of that size on a loop
  device (where the writer allocates blocks ahead, as it does not on tmpfs);
  ``ext4_inbox``: one of 24 MiB.
- ``stalling_disk(size, journal=True) -> StallingDisk``: an ext4 whose
  fsync hangs between ``stall()`` and ``resume()`` (a disk that stops answering).
- ``cli``: ``run_cli`` from :mod:`peercrypt.testing.nodes` (``cli(*args, data_dir=...)``).
"""

from __future__ import annotations

import compileall
import contextlib
import itertools
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings

import actors
import peercrypt
import peercrypt.testing.nodes as nodes
from peercrypt import dataclass_cache
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.disk import DiskUnavailable, StallingDisk, small_tmpfs, stalling_ext4
from peercrypt.testing.disk import small_ext4 as _small_ext4
from peercrypt.testing.nodes import NodeError, NodeProcess, run_cli
from peercrypt.testing.nodes import blake3_file as _blake3_file

# No per-example deadline: it is a timing goal inside a test, and on a loaded
# machine a property test of pure code overran Hypothesis's 200 ms default
# (timing goals live in scripts/). Every example still runs to its end.
settings.register_profile("peercrypt", deadline=None)
settings.load_profile("peercrypt")


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the package once, before any test starts a process.

    The suite starts hundreds of Python processes (nodes, CLI commands).
    Under ``PYTHONDONTWRITEBYTECODE`` (some shells and CI images set it) none
    of them writes the bytecode of what it imports, so each one compiled the
    package's sources anew: 0.4 CPU seconds of a node's 1.1 s start. The
    bytecode goes where Python puts it without that variable (``__pycache__``,
    ignored by git); a source changed later is compiled again as usual."""
    if hasattr(config, "workerinput"):
        return  # xdist's workers: the controller did it before starting them
    for package in (peercrypt, actors):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)
    # The compiled methods of the dataclasses, kept beside the bytecode
    # (peercrypt/dataclass_cache.py): about 0.1 CPU s of every node's start.
    dataclass_cache.build()


DURATIONS = Path(__file__).with_name("durations.json")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest test files first (``tests/durations.json``: seconds of one
    worker per file, from a whole run; ``scripts/test_durations.py`` writes
    it), each file's tests in the order pytest-randomly gave them.

    ``scripts/test.sh`` keeps each file on one worker (``--dist loadfile``)
    and hands files out in this order (``--no-loadscope-reorder``): a long
    file taken last kept one worker busy while the others had nothing left.
    A file not in the table counts as an average one; the table only orders
    the files, no test depends on it."""
    try:
        table: dict[str, float] = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return
    default = sum(table.values()) / max(len(table), 1)
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(item.path.name, index)
    items.sort(key=lambda item: (-table.get(item.path.name, default), first[item.path.name]))


_DEFAULT = object()
_Size = TypeVar("_Size", str, int)


@pytest.fixture
def free_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (held
    bound, never listening, so a node another test starts cannot take it)."""
    with nodes.dead_port() as port:
        yield port


@pytest.fixture
def network_key() -> str:
    """A random network key, different in every test."""
    return new_network_key()


@pytest.fixture
def node_factory(tmp_path: Path, network_key: str) -> Iterator[Callable[..., NodeProcess]]:
    """Start :class:`NodeProcess` instances; stop (and check) them all at teardown.

    ``node_factory(*extra_args, network_key=<the test's key>, open_network=False,
    name=None, env=None, start=True)``. ``network_key=None`` passes no key
    (give ``open_network=True``, ``env`` or ``extra_args`` instead). ``name``
    is the data dir under ``tmp_path`` (default ``node0``, ``node1``...); the
    same name twice reuses the data dir (and identity).
    """
    nodes: list[NodeProcess] = []
    counter = itertools.count()
    test_key = network_key

    def factory(
        *extra_args: str,
        network_key: Any = _DEFAULT,
        open_network: bool = False,
        name: str | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
    ) -> NodeProcess:
        key = test_key if network_key is _DEFAULT else network_key
        node = NodeProcess(
            data_dir=tmp_path / (name or f"node{next(counter)}"),
            network_key=key,
            open_network=open_network,
            extra_args=extra_args,
            env=env,
        )
        nodes.append(node)
        if start:
            try:
                node.start()
            except NodeError:
                nodes.remove(node)  # start() killed it and raised with its log
                raise
        return node

    yield factory

    problems: list[str] = []
    for node in nodes:  # signal all first: they shut down in parallel
        if node.running:
            node.send_signal(signal.SIGTERM)
    for node in nodes:
        if node.proc is None:
            continue
        try:
            code = node.stop()
        except NodeError as exc:
            problems.append(str(exc))
            continue
        if not node.killed and code != 0:
            problems.append(f"node in {node.data_dir} exited with {code}\n{node.log_tail()}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    """``make_file(size, name=None, directory=None) -> Path``: random content.

    Files go to ``tmp_path/files`` unless ``directory`` is given; the default
    name is unique per call. An existing file is an error (no silent reuse).
    """
    counter = itertools.count()

    def make(size: int, name: str | None = None, directory: Path | None = None) -> Path:
        folder = directory if directory is not None else tmp_path / "files"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (name or f"file{next(counter)}-{size}.bin")
        with open(path, "xb") as f:
            left = size
            while left > 0:
                block = os.urandom(min(left, 4 << 20))
                f.write(block)
                left -= len(block)
        assert path.stat().st_size == size
        return path

    return make


@pytest.fixture
def blake3_file() -> Callable[[Path], str]:
    """``blake3_file(path) -> str``: the hex BLAKE3 digest of a file."""
    return _blake3_file


def _mounts(
    tmp_path: Path,
    what: str,
    mounter: Callable[[Path, _Size], contextlib.AbstractContextManager[Path]],
) -> Iterator[Callable[[_Size], Path]]:
    """``mount(size) -> Path`` for a fixture: each a fresh filesystem under
    ``tmp_path``, all unmounted when the test ends; the test is skipped (with
    the reason) where ``mounter`` cannot mount one."""
    counter = itertools.count()
    with contextlib.ExitStack() as mounts:

        def mount(size: _Size) -> Path:
            try:
                where = tmp_path / f"small-{what}-{next(counter)}"
                return mounts.enter_context(mounter(where, size))
            except DiskUnavailable as exc:
                pytest.skip(f"cannot mount a {what}: {exc}")

        yield mount


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_disk(size) -> Path``: a directory on a tmpfs of ``size``
    ("512k", "24m": a disk that fills), mounted until the test ends (the
    test is skipped where no tmpfs can be mounted)."""
    yield from _mounts(tmp_path, "tmpfs", small_tmpfs)


@pytest.fixture
def small_inbox(small_disk: Callable[[str], Path]) -> Path:
    """A 24 MiB tmpfs for a receiver's inbox, mounted for this test only."""
    return small_disk("24m")


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``small_ext4(size) -> Path``: a directory on an ext4 of ``size`` bytes
    (a sparse image in ``tmp_path``, loop-mounted), unmounted and deleted when
    the test ends (skipped, with the reason, where it cannot be: not root, no
    ``mkfs.ext4``, no loop device)."""
    yield from _mounts(tmp_path, "ext4", _small_ext4)


@pytest.fixture
def ext4_inbox(small_ext4: Callable[[int], Path]) -> Path:
    """A 24 MiB ext4 for a receiver's inbox, mounted for this test only."""
    return small_ext4(24 * 1024 * 1024)


@pytest.fixture
def stalling_disk(tmp_path: Path) -> Iterator[Callable[..., StallingDisk]]:
    """``stalling_disk(size, journal=True) -> StallingDisk``: an ext4 whose
    ``stall()`` makes its fsync hang until ``resume()`` (as a disk that stops
    answering; :func:`peercrypt.testing.disk.stalling_ext4`), resumed and
    unmounted when the test ends (skipped, with the reason, where it cannot
    be mounted). Resume it before the nodes on it stop: a hung disk holds them."""
    counter = itertools.count()
    with contextlib.ExitStack() as mounts:

        def mount(size: int, journal: bool = True) -> StallingDisk:
            try:
                where = tmp_path / f"stalling-{next(counter)}"
                return mounts.enter_context(stalling_ext4(where, size, journal))
            except DiskUnavailable as exc:
                pytest.skip(f"cannot mount a stalling disk: {exc}")

        yield mount


@pytest.fixture
def cli() -> Callable[..., Any]:
    """``cli(*args, data_dir=None, env=None, timeout=120) -> CliResult``."""
    return run_cli
