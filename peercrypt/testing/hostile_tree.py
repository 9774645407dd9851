"""A node that sends a folder of its own making, for tests (docs/security.md).

What a member with the network key and a modified sender can do to a
folder transfer: the manifest and the bytes after it are whatever it likes
(``..``, absolute or reserved names, sizes that do not add up, contents
that do not match their hashes). Everything else is the real node: its
multicast and unicast senders, keys, seals and signatures, so the
receivers see exactly what such a peer would send.

Run as ``python -m peercrypt.testing.hostile_tree SPEC [peercrypt args...]``:
each walk of a folder (``send DIR ...``, ``send -m DIR ...``) reads SPEC, a
JSON file ``{"manifest": HEX, "body": HEX, "files": N}``, at that moment,
so one process serves any number of cases. :class:`HostileTreeNode` is the
:class:`~peercrypt.testing.nodes.NodeProcess` that runs it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors import tree_source
from peercrypt.core.tree import Layout
from peercrypt.testing.nodes import NodeProcess


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
        return [*argv[:at], "peercrypt.testing.hostile_tree", str(self.spec), *argv[at + 1 :]]


def main() -> None:
    spec = Path(sys.argv[1])
    tree_source.build_tree = raw_walk(spec)
    sys.argv = ["peercrypt", *sys.argv[2:]]
    from peercrypt.cli import run

    run()


if __name__ == "__main__":
    main()
