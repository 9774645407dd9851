#!/usr/bin/env bash
# Quick start, part 2: install with the test extras, then lint, type-check
# and run the whole test suite. Extra arguments go to pytest.
# The suite runs in three worker processes, one more than this machine's
# cores: most tests wait on real node processes (on 2 cores, 697 s against
# 1027 s with two; docs/benchmarks.md). A test file stays on one worker, so
# a module's shared nodes start once; files go out longest first
# (tests/durations.json, see tests/conftest.py), so that no long file is
# left to the end. PYTEST_WORKERS=0 runs it in this process alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv "[test]"
echo "== ruff"; .venv/bin/ruff check .; .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder "$@"
