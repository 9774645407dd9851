"""Every transfer mode, every size and every special case: the same as
``python scripts/run_mode_test.py all`` (see there).

    python scripts/test_all_modes.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_mode_test

if __name__ == "__main__":
    sys.exit(run_mode_test.main(["all"]))
