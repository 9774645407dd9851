"""The one chunk reader: exact chunks, a short last one, a shrunk file refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors.file_chunks import chunk_length, read_chunk


def test_chunks_of_a_file_and_a_shrunk_file(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [read_chunk(fd, i, 4096, len(data)) for i in range(3)]
        assert b"".join(chunks) == data
        assert [len(c) for c in chunks] == [4096, 4096, 1808]
        assert chunk_length(3, 4096, len(data)) == 0
        os.truncate(path, 9000)  # the file shrank under the reader
        with pytest.raises(OSError, match="shrank"):
            read_chunk(fd, 2, 4096, len(data))
    finally:
        os.close(fd)
