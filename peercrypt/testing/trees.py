"""Folders for tests: a sample tree, manifests made by hand, and a node
that sends a folder of its own making (docs/security.md).

What a member with the network key and a modified sender can do to a
folder transfer: the manifest and the bytes after it are whatever it likes
(``..``, absolute or reserved names, sizes that do not add up, contents
that do not match their hashes). Everything else is the real node: its
multicast and unicast senders, keys, seals and signatures, so the
receivers see exactly what such a peer would send.

Run as ``python -m peercrypt.testing.trees SPEC [peercrypt args...]``:
each walk of a folder (``send DIR ...``, ``send -m DIR ...``) reads SPEC, a
JSON file ``{"manifest": HEX, "body": HEX, "files": N}``, at that moment,
so one process serves any number of cases. :class:`HostileTreeNode` is the
:class:`~peercrypt.testing.nodes.NodeProcess` that runs it.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import msgpack

from actors import tree_source
from peercrypt.core.tree import Kind, Layout, TreeEntry
from peercrypt.testing.nodes import NodeProcess


def contents(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` -> the BLAKE3 of its content (None: a folder)."""
    out: dict[str, str | None] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = None if p.is_dir() else blake3.blake3(p.read_bytes()).hexdigest()
    return out


def sample_tree(src: Path, outside: Path) -> dict[str, str | None]:
    """Make at ``src`` a folder with nested and unicode names, an empty
    folder, an empty file, an executable and a symbolic link ``up`` to
    ``outside``; its :func:`contents` as a send stores it (the link left out)."""
    (src / "2026" / "ünï 😀 夏").mkdir(parents=True)
    (src / "empty folder").mkdir()
    (src / "2026" / "ünï 😀 夏" / "a.jpg").write_bytes(os.urandom(300_000))
    (src / "2026" / "empty.txt").write_bytes(b"")
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src / "run.sh", 0o755)
    (src / "up").symlink_to(outside)
    return {k: v for k, v in contents(src).items() if k != "up"}


def f(*path: str, data: bytes) -> TreeEntry:
    """A manifest entry: the file ``path`` holding ``data``."""
    return TreeEntry(Kind.FILE, path, len(data), 0o644, blake3.blake3(data).digest())


def d(*path: str) -> TreeEntry:
    """A manifest entry: the folder ``path``."""
    return TreeEntry(Kind.DIR, path)


def row(e: TreeEntry) -> list[Any]:
    """``e`` as a manifest row, whatever it holds."""
    return [e.kind.value, list(e.path), e.size, e.mode, e.digest]


def raw_manifest(rows: list[list[Any]]) -> bytes:
    """A manifest of ``rows`` as given: no rule checked."""
    data = msgpack.packb([1, rows], use_bin_type=True)
    assert isinstance(data, bytes)
    return data


class RawTree(tree_source.TreeSource):
    """A tree stream given as bytes: ``manifest`` then ``body``, announced
    as ``count`` files whatever the manifest says."""

    def __init__(self, manifest: bytes, body: bytes, count: int) -> None:
        super().__init__(
            manifest=manifest, layout=Layout((), len(manifest), (), ()), paths=[], stamps=[]
        )
        self.stream = manifest + body
        self.total_size = len(self.stream)
        self.count = count

    @property
    def files(self) -> int:
        return self.count

    def pread(self, length: int, offset: int) -> bytes:
        return self.stream[offset : offset + length]

    def changed(self) -> str:
        return ""


def raw_walk(spec: Path) -> Any:
    """A stand-in for :func:`actors.tree_source.build_tree` reading ``spec``."""

    def build(roots: list[Path], *_: Any, **__: Any) -> RawTree:
        data = json.loads(spec.read_text())
        return RawTree(bytes.fromhex(data["manifest"]), bytes.fromhex(data["body"]), data["files"])

    return build


def write_spec(spec: Path, manifest: bytes, body: bytes, files: int) -> None:
    spec.write_text(json.dumps({"manifest": manifest.hex(), "body": body.hex(), "files": files}))


@dataclass
class HostileTreeNode(NodeProcess):
    """A node process whose folder sends are read from ``spec``."""

    spec: Path = Path()

    @property
    def argv(self) -> list[str]:
        argv = super().argv
        at = argv.index("peercrypt")
        return [*argv[:at], "peercrypt.testing.trees", str(self.spec), *argv[at + 1 :]]


def main() -> None:
    spec = Path(sys.argv[1])
    tree_source.build_tree = raw_walk(spec)
    sys.argv = ["peercrypt", *sys.argv[2:]]
    from peercrypt.cli import run

    run()


if __name__ == "__main__":
    main()
