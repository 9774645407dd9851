"""scripts/create_env.sh: a .env from flags or from answers, with a fresh
network key that is never printed, checked the way the node reads it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pexpect

from peercrypt import config_sources
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import cli_env

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "create_env.sh"
ENV = cli_env({"PYTHON": sys.executable})  # the interpreter these tests run in


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=cwd, env=ENV, capture_output=True,
        text=True, stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip


def _values(path: Path) -> dict[str, str]:
    return config_sources.read_env_file(path)


def test_from_flags(tmp_path: Path) -> None:
    done = _run(tmp_path, "--yes", "--mode", "aimd", "--aimd-window", "32", "--disable-gossip")
    assert done.returncode == 0, done.stderr
    env = tmp_path / ".env"
    values = _values(env)
    key = values.pop("PEERCRYPT_NETWORK_KEY")
    assert len(key) >= 40 and key not in done.stdout + done.stderr
    assert values == {"DEFAULT_MODE": "aimd", "AIMD_WINDOW": "32", "DISABLE_GOSSIP": "true"}
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    again = _run(tmp_path, "--yes")
    assert again.returncode == 2 and "exists" in again.stderr
    other = _run(tmp_path, "--yes", "--force")
    assert other.returncode == 0
    assert _values(env)["PEERCRYPT_NETWORK_KEY"] != key  # a fresh key each time


MODES = "normal, token-bucket, aimd, qos, parallel, multicast"


def test_an_invalid_value_writes_nothing(tmp_path: Path) -> None:
    """One line naming the option as given (not a variable of a temporary
    file the user never saw), exit 2, nothing written."""
    for args, line in [
        (["--parallel-threads", "99"], "--parallel-threads 99: expected an integer in 1..64"),
        (["--mode", "fast"], f"--mode fast: expected one of {MODES}"),
        (["--timeout", "abc"], "--timeout abc: expected a number in 0.05..600 s"),
        (
            ["--aimd-window", "100", "--aimd-min-window", "200"],
            "AIMD windows must satisfy --aimd-min-window <= --aimd-window <= --aimd-max-window "
            "(got --aimd-min-window 200, --aimd-window 100, --aimd-max-window 16384 (the default))",
        ),
    ]:
        bad = _run(tmp_path, "--yes", "--force", *args)
        assert (bad.returncode, bad.stdout, bad.stderr) == (
            2,
            "",
            f"create_env.sh: error: {line}; nothing written\n",
        ), bad
        assert os.listdir(tmp_path) == []
    unknown = _run(tmp_path, "--yes", "--colour", "blue")
    assert unknown.returncode == 2 and "unknown option --colour" in unknown.stderr


def _asked(tmp_path: Path) -> pexpect.spawn:
    """The script run at a terminal, at its first question (the mode)."""
    child = pexpect.spawn(
        "bash", [str(SCRIPT)], cwd=str(tmp_path), env=ENV, encoding="utf-8", timeout=60
    )
    child.expect(r"default transfer mode .*\[normal\]: ")
    return child


def test_interactive(tmp_path: Path) -> None:
    child = _asked(tmp_path)
    child.sendline("qos")
    for _ in range(8):
        child.expect(r"\]: ")
        child.sendline("")
    child.expect(r"seconds between health checks \[10.0\]: ")
    child.sendline("20")
    child.expect("wrote .env")
    child.expect(pexpect.EOF)
    values = _values(tmp_path / ".env")
    assert values.pop("PEERCRYPT_NETWORK_KEY") not in str(child.before)
    assert values == {"DEFAULT_MODE": "qos", "HEALTH_CHECK_INTERVAL": "20"}


def test_an_invalid_answer_is_named_as_answered(tmp_path: Path) -> None:
    child = _asked(tmp_path)
    child.sendline("fast")
    for _ in range(9):
        child.expect(r"\]: ")
        child.sendline("")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2
    said = str(child.before).splitlines()[-1]
    assert said == (
        f"create_env.sh: error: the answer 'fast' to \"default transfer mode ({MODES})\": "
        f"expected one of {MODES}; nothing written"
    )
    assert os.listdir(tmp_path) == []


def test_help_is_the_header_comment_and_nothing_else(tmp_path: Path) -> None:
    done = _run(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Write a .env for PeerCrypt")
    assert lines[-1].startswith("checked with `peercrypt config show`"), lines[-3:]
    assert not any(line.startswith(("set ", "#!")) for line in lines), lines
    assert not (tmp_path / ".env").exists()


def test_a_key_from_the_environment_is_checked_as_a_node_would(tmp_path: Path) -> None:
    """``--key-from-env`` with a passphrase a node refuses: nothing written,
    one line saying why, never the key (it was written, and the script said
    "with a new network key"); a good one is written and said to be that."""
    short = subprocess.run(
        ["bash", str(SCRIPT), "--yes", "--key-from-env"], cwd=tmp_path,
        env={**ENV, "PEERCRYPT_NETWORK_KEY": "hunter2"}, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert (short.returncode, short.stderr) == (
        2,
        "create_env.sh: error: --key-from-env: $PEERCRYPT_NETWORK_KEY: the network key is a "
        "passphrase of 7 characters; use at least 20, or better a key from `peercrypt keygen`; "
        "nothing written\n",
    ), short.stderr
    assert "hunter2" not in short.stderr + short.stdout
    assert not (tmp_path / ".env").exists()
    key = new_network_key()
    good = subprocess.run(
        ["bash", str(SCRIPT), "--yes", "--key-from-env"], cwd=tmp_path,
        env={**ENV, "PEERCRYPT_NETWORK_KEY": key}, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert "with the network key of $PEERCRYPT_NETWORK_KEY" in good.stdout, good.stdout
    assert _values(tmp_path / ".env")["PEERCRYPT_NETWORK_KEY"] == key
