"""Options taking seconds refuse ``nan`` (every comparison with it is false,
so it passed the range checks: ``send --timeout nan`` ended its wait for the
node at once and reported a failure while the node went on with the send;
``receive --timeout nan`` waited for ever) and ``inf``: one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from peercrypt.testing.nodes import run_cli


@pytest.mark.parametrize(
    "args",
    [
        ("send", "FILE", "127.0.0.1", "7400", "--timeout", "nan"),
        ("send", "FILE", "127.0.0.1", "7400", "--timeout", "inf"),
        ("send", "FILE", "127.0.0.1", "7400", "-m", "--to", "127.0.0.1:7401", "--timeout", "nan"),
        ("receive", "--timeout", "nan"),
        ("node", "--part-expiry", "nan"),
        ("node", "--gossip-interval", "nan"),
        ("top", "--interval", "nan"),
    ],
)
def test_nan_and_inf_are_refused_in_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    argv = [str(path) if a == "FILE" else a for a in args]
    result = run_cli(*argv, data_dir=tmp_path / "dd", timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peercrypt: error:"), lines
    assert "nan" in lines[0] or "inf" in lines[0], lines


@pytest.mark.parametrize("flag", ["--advertise-host", "--bootstrap-host", "--host"])
def test_a_host_with_a_control_character_is_refused_in_one_line(tmp_path: Path, flag: str) -> None:
    """It would go into the node's signed record: refused, escaped, exit 2."""
    result = run_cli("node", flag, "ho\x1b[2Jst", data_dir=tmp_path / "dd", timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peercrypt: error:"), lines
    assert "'ho\\x1b[2Jst' is not a host name or address" in lines[0], lines
    assert "\x1b" not in result.stderr
