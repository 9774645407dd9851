"""Chunk sizes: the default and the bounds a send accepts (``send
--chunk-size``). Their own module, so that the CLI's fast path
(:mod:`peercrypt.cli.fast`) knows them without the settings table."""

MiB = 1024 * 1024
# A unicast send that names no chunk size offers any size from
# DEFAULT_MIN_CHUNK to DEFAULT_MAX_CHUNK and its receiver chooses one by its
# load (core/receive_window.py, choose_chunk): 4 MiB chunks cost one transfer
# less (the same two nodes, 1 GiB interleaved: sending node 1.30 against 1.61
# CPU s per GiB, receiving node 1.48 against 1.89), but 4 MiB for every one
# of 16 transfers in flight each way took the busiest of 4 nodes to 176-182
# MiB against 120-125 (goal 150) while a receiver's credit was never below
# one chunk (docs/benchmarks.md, 2026-12-02 22:05-22:27 UTC; 154-169 since
# transfers wait their turn within the buffer, "A transfer waits its turn").
# The receiver gives large chunks where its buffer holds several of them for
# the transfer.
DEFAULT_MAX_CHUNK = 4 * MiB
DEFAULT_MIN_CHUNK = 1 * MiB
# A multicast session's chunk (one size for every receiver) and the chunk of
# a message that names none (bench scripts, the shared-memory ring's counts).
DEFAULT_CHUNK = 1 * MiB
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 16 * MiB
