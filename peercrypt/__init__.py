"""PeerCrypt: encrypted peer-to-peer file transfer built from ZeroMQ actors."""

__version__ = "0.1.0"
