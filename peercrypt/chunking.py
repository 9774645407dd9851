"""Chunk sizes: the default and the bounds a send accepts (``send
--chunk-size``). Their own module, so that the CLI's fast path
(:mod:`peercrypt.cli.fast`) knows them without the settings table."""

MiB = 1024 * 1024
DEFAULT_CHUNK = 1 * MiB
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 16 * MiB
