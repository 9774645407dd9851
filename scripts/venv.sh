# Sourced by demo.sh and test.sh: make .venv with Python >= 3.11 and install
# the project (editable) with the given extras, quietly, once per change of
# pyproject.toml, and byte-compile what it installed.
find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "peercrypt: error: Python 3.11 or newer is needed" >&2
    return 1
}

ensure_venv() {
    local extras="$1" python stamp
    if [ ! -x .venv/bin/python ]; then
        python=$(find_python)
        "$python" -m venv .venv
    fi
    stamp=".venv/.installed$extras"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "installing PeerCrypt$extras into .venv ..." >&2
        if ! .venv/bin/python -m pip install --quiet -e ".$extras" >.venv/install.log 2>&1; then
            cat .venv/install.log >&2
            echo "peercrypt: error: installing into .venv failed (log above)" >&2
            return 1
        fi
        # The dependencies' bytecode, once per install (see below).
        .venv/bin/python -m compileall -q .venv/lib >/dev/null 2>&1 || true
        touch "$stamp"
    fi
    # The project's bytecode, for the files changed since the last run:
    # where PYTHONDONTWRITEBYTECODE is set nothing else writes it, and every
    # command would compile its sources again (`peercrypt --help`: 0.37
    # against 0.22 CPU s, and as much on every node start). A file that
    # does not compile is reported by the command that imports it.
    .venv/bin/python -m compileall -q peercrypt actors >/dev/null 2>&1 || true
    # And the compiled methods of its dataclasses beside them
    # (peercrypt/dataclass_cache.py: a node's imports 0.49 against 0.34 CPU s).
    .venv/bin/python -c "from peercrypt.dataclass_cache import build; build()" \
        >/dev/null 2>&1 || true
}
