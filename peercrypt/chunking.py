"""Chunk sizes: the default and the bounds a send accepts (``send
--chunk-size``). Their own module, so that the CLI's fast path
(:mod:`peercrypt.cli.fast`) knows them without the settings table."""

MiB = 1024 * 1024
# 4 MiB, not 1: what a chunk costs apart from its bytes (the actors' loops,
# headers, acks, window, ZeroMQ's frames and wake-ups) is paid a quarter as
# often; with the same nodes, 1 GiB sends interleaved, the sending node took
# 1.30 CPU s per GiB against 1.61 and the receiving node 1.48 against 1.89
# (docs/benchmarks.md). A slow path still gets smaller ones (core/modes.py).
DEFAULT_CHUNK = 4 * MiB
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 16 * MiB
