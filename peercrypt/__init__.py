"""PeerCrypt: encrypted peer-to-peer file transfer built from ZeroMQ actors."""

from peercrypt import dataclass_cache

__version__ = "0.1.0"

dataclass_cache.install()  # before any of the package's dataclasses is made
