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


def _run(*args: str, script: str = "run_mode_test.py") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_run_mode_test_help_exits_0(flag: str) -> None:
    done = _run(flag)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.splitlines()[0] == USAGE
    assert "Exit 0 only if every case passed." in done.stdout


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ([], "name a mode, or all"),
        (["fast"], "unknown mode 'fast'"),
        (["aimd", "qos"], "one mode or all, not 2 arguments"),
    ],
)
def test_run_mode_test_wrong_arguments_exit_2(args: list[str], why: str) -> None:
    done = _run(*args)
    said = f"{USAGE}\nrun_mode_test.py: error: {why}\n"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", said), done


def test_test_all_modes_takes_help_and_no_other_argument() -> None:
    """It runs every mode with real nodes: `--help` says so and runs
    nothing; any other argument is refused (it ran them all)."""
    done = _run("--help", script="test_all_modes.py")
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.splitlines()[0] == "usage: test_all_modes.py", done.stdout
    assert "run_mode_test.py all" in done.stdout, done.stdout
    done = _run("aimd", script="test_all_modes.py")
    said = "usage: test_all_modes.py\ntest_all_modes.py: error: it takes no argument\n"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", said), done
