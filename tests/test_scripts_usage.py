"""The scripts with a hand-written argument check: ``--help`` (``-h``) is
asked for, so it prints the usage on stdout and exits 0; a wrong argument
prints it on stderr and exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
USAGE = "usage: run_mode_test.py <normal|token-bucket|aimd|qos|parallel|multicast|all>"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "run_mode_test.py"), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_run_mode_test_help_exits_0(flag: str) -> None:
    done = _run(flag)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.splitlines()[0] == USAGE
    assert "Exit 0 only if every case passed." in done.stdout


@pytest.mark.parametrize("args", [[], ["fast"], ["aimd", "qos"]])
def test_run_mode_test_wrong_arguments_exit_2(args: list[str]) -> None:
    done = _run(*args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", USAGE + "\n"), done
