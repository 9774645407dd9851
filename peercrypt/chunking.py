"""Chunk sizes: the default and the bounds a send accepts (``send
--chunk-size``). Their own module, so that the CLI's fast path
(:mod:`peercrypt.cli.fast`) knows them without the settings table."""

MiB = 1024 * 1024
# 1 MiB. 4 MiB chunks cost one transfer less (the same two nodes, 1 GiB
# interleaved: sending node 1.30 against 1.61 CPU s per GiB, receiving node
# 1.48 against 1.89) but a receiver's credit is never below one chunk, so
# with 16 transfers in flight each way the busiest of 4 nodes peaked at
# 176-182 MiB against 120-125 (goal 150), and 2 MiB chunks cut fairness to
# 0.84-0.86 (goal 0.95): docs/benchmarks.md, 2026-12-02 22:05-22:27 UTC.
DEFAULT_CHUNK = 1 * MiB
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 16 * MiB
