"""Every transfer mode, every size and every special case: the same as
``python scripts/run_mode_test.py all`` (see there).

    python scripts/test_all_modes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_mode_test

USAGE = "usage: test_all_modes.py"


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):  # asked for: on stdout, exit 0
        print(USAGE, __doc__.strip(), sep="\n\n")
        return 0
    if argv:  # (it starts real nodes: nothing runs on a word it does not take)
        print(USAGE, "test_all_modes.py: error: it takes no argument", sep="\n", file=sys.stderr)
        return 2
    return run_mode_test.main(["all"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
