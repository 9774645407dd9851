#!/usr/bin/env bash
# Quick start, part 1: a local demo of real encrypted transfers.
# Creates .venv (Python >= 3.11), installs PeerCrypt into it, starts three
# nodes on loopback, sends real files between them, checks every hash,
# stops the nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv ""
exec .venv/bin/python scripts/demo.py "$@"
