#!/bin/sh
# The image's entrypoint: `peercrypt ARGS...` (default: `node`, see the
# Dockerfile's CMD), as PID 1's child of the container's init or as PID 1,
# with two container conveniences read from the environment:
#
#   PEERCRYPT_NETWORK_KEY_FILE  a file holding the network key (a compose
#                               secret, /run/secrets/network_key): read into
#                               PEERCRYPT_NETWORK_KEY, so the key is in
#                               neither argv nor the container's config.
#   PEERCRYPT_INBOX_ROOT        for `node`: the inbox is ROOT/$HOSTNAME, so
#                               the replicas of one service share one named
#                               volume, each in its own directory.
#
# The old tool's `docker run ... peercrypt python src/cli.py OPTIONS` is
# `peercrypt start OPTIONS` (a node and a prompt on it, as that was).
#
# Everything else is read by peercrypt itself (see README, "Containers").
# `exec` leaves no shell behind: SIGTERM reaches the node, which stops
# cleanly and exits 0.
set -eu
if [ -n "${PEERCRYPT_NETWORK_KEY_FILE:-}" ] && [ -z "${PEERCRYPT_NETWORK_KEY:-}" ]; then
    if [ ! -r "$PEERCRYPT_NETWORK_KEY_FILE" ]; then
        echo "peercrypt: error: PEERCRYPT_NETWORK_KEY_FILE: cannot read $PEERCRYPT_NETWORK_KEY_FILE" >&2
        exit 2
    fi
    PEERCRYPT_NETWORK_KEY=$(cat "$PEERCRYPT_NETWORK_KEY_FILE")
    export PEERCRYPT_NETWORK_KEY
fi
unset PEERCRYPT_NETWORK_KEY_FILE
if [ "${1:-}" = python ] && [ "${2:-}" = src/cli.py ]; then
    shift 2
    set -- start "$@"
fi
if [ "${1:-}" = node ] && [ -n "${PEERCRYPT_INBOX_ROOT:-}" ]; then
    shift
    set -- node --inbox "$PEERCRYPT_INBOX_ROOT/${HOSTNAME:-$(hostname)}" "$@"
fi
exec peercrypt "$@"
