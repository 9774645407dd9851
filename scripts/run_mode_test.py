"""Real transfers in each transfer mode, checked by hash, with a summary table.

    python scripts/run_mode_test.py <normal|token-bucket|aimd|qos|parallel|multicast|all>

For each mode: files of 1 KiB, 10 KiB and 100 KiB sent between real nodes on
127.0.0.1, then the mode's special cases (token-bucket: bucket sizes,
including the old tool's ``-b 1024 -r 512``; aimd: windows and detectors;
qos: each priority; parallel: 2 and 4 lanes; multicast: two and three
receivers). A case passes when ``send`` exits 0 and the BLAKE3 of every
stored copy equals the source's. Exit 0 only if every case passed.

From a fresh clone it makes the project's virtualenv first (scripts/venv.sh)
and runs itself in it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peercrypt.testing.nodes import CliResult, NodeProcess

ROOT = Path(__file__).resolve().parent.parent
MODES = ("normal", "token-bucket", "aimd", "qos", "parallel", "multicast")
SIZES = (1024, 10 * 1024, 100 * 1024)
KiB = 1024


def _bootstrap() -> None:
    """Re-run in the project's virtualenv when peercrypt is not importable."""
    try:
        import peercrypt  # noqa: F401
    except ImportError:
        venv_python = ROOT / ".venv" / "bin" / "python"
        if Path(sys.executable) == venv_python:
            raise
        subprocess.run(
            ["bash", "-c", 'source scripts/venv.sh && ensure_venv "[test]"'], cwd=ROOT, check=True
        )
        os.execv(venv_python, [str(venv_python), *sys.argv])


@dataclass(frozen=True)
class Case:
    mode: str
    name: str
    size: int
    args: tuple[str, ...]
    receivers: int = 1  # multicast: how many nodes receive


def cases(mode: str) -> list[Case]:
    """The sizes in the mode's plain form, then its special cases (100 KiB)."""
    plain = {
        "normal": ("--mode", "normal"),
        "token-bucket": ("-r", str(1024 * KiB)),
        "aimd": ("--mode", "aimd"),
        "qos": ("-p", "high"),
        "parallel": ("-t", "2"),
        "multicast": ("-m",),
    }[mode]
    receivers = 2 if mode == "multicast" else 1
    out = [Case(mode, f"{size // KiB} KiB", size, plain, receivers) for size in SIZES]
    Special = list[tuple[str, tuple[str, ...], int, int]]
    table: dict[str, Special] = {
        "normal": [],
        "token-bucket": [
            ("-b 1024 -r 512 (the old example)", ("-b", "1024", "-r", "512"), 1024, 1),
            ("bucket 4 KiB at 200 KiB/s", ("-b", "4096", "-r", str(200 * KiB)), 100 * KiB, 1),
            ("bucket 64 KiB at 200 KiB/s", ("-b", str(64 * KiB), "-r", str(200 * KiB)),
             100 * KiB, 1),
            ("default bucket at 200 KiB/s", ("-r", str(200 * KiB)), 100 * KiB, 1),
        ],
        "aimd": [
            ("-w 32 -min-w 8 -max-w 128", ("-w", "32", "-min-w", "8", "-max-w", "128"),
             100 * KiB, 1),
            ("-w 32 alone", ("-w", "32"), 100 * KiB, 1),
            ("-no-timeout", ("-no-timeout",), 100 * KiB, 1),
            ("-no-dupack -ack-threshold 5", ("-no-dupack", "-ack-threshold", "5"), 100 * KiB, 1),
        ],
        "qos": [
            (f"-p {p}", ("-p", p), 100 * KiB, 1) for p in ("normal", "high", "highest", "3")
        ],
        "parallel": [
            ("-t 2", ("-t", "2", "--chunk-size", str(16 * KiB)), 100 * KiB, 1),
            ("-t 4", ("-t", "4", "--chunk-size", str(16 * KiB)), 100 * KiB, 1),
        ],
        "multicast": [
            ("-dual", ("-dual",), 100 * KiB, 2),
            ("three receivers (--to twice)", ("-m",), 100 * KiB, 3),
            ("--mode multicast", ("--mode", "multicast"), 100 * KiB, 2),
        ],
    }  # fmt: skip
    out += [Case(mode, name, size, args, n) for name, args, size, n in table[mode]]
    return out


@dataclass
class Outcome:
    case: Case
    ok: bool
    seconds: float
    detail: str


def run(modes: list[str]) -> list[Outcome]:
    from peercrypt.crypto.identity import new_network_key
    from peercrypt.testing.nodes import NodeProcess, random_file

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="peercrypt-modes-") as tmp:
        base = Path(tmp)
        key = new_network_key()
        nodes = [NodeProcess(base / f"node{i}", network_key=key).start() for i in range(4)]
        sender, receivers = nodes[0], nodes[1:]
        try:
            for number, case in enumerate(c for mode in modes for c in cases(mode)):
                source = random_file(base / f"case{number}-{case.size}.bin", case.size)
                targets = receivers[: case.receivers]
                extra: list[str] = list(case.args)
                for other in targets[1:]:
                    extra += ["--to", f"{other.host}:{other.port}"]
                started = time.monotonic()
                result = sender.send_result(
                    source, targets[0].host, targets[0].port, *extra, timeout=300
                )
                seconds = time.monotonic() - started
                outcomes.append(_judge(case, result, source, targets, seconds))
                print(_row(outcomes[-1]), flush=True)
        finally:
            for node in nodes:
                node.stop()
    return outcomes


def _judge(
    case: Case, result: CliResult, source: Path, targets: Sequence[NodeProcess], seconds: float
) -> Outcome:
    from peercrypt.testing.nodes import blake3_file

    if result.returncode != 0:
        line = result.json.get("error") or (result.stderr.strip().splitlines() or ["?"])[-1]
        return Outcome(case, False, seconds, f"exit {result.returncode}: {line}")
    digest = blake3_file(source)
    report = result.json
    if case.mode == "multicast":
        stored = [str(r.get("stored_as") or "") for r in report.get("receivers", [])]
    else:
        stored = [str(report.get("stored_as") or "")]
    if len(stored) != len(targets):
        return Outcome(case, False, seconds, f"{len(stored)} of {len(targets)} receivers")
    for node, name in zip(targets, stored, strict=True):
        if not name or blake3_file(node.inbox / name) != digest:
            return Outcome(case, False, seconds, f"wrong content at {node.host}:{node.port}")
    mode = report.get("mode") or "?"
    if mode != case.mode:
        return Outcome(case, False, seconds, f"sent in mode {mode}, not {case.mode}")
    return Outcome(case, True, seconds, f"blake3 {digest[:16]}... x{len(targets)}")


def _row(o: Outcome) -> str:
    verdict = "ok" if o.ok else "FAIL"
    return f"{o.case.mode:13} {o.case.name:34} {verdict:5} {o.seconds:6.2f} s  {o.detail}"


def summary(outcomes: list[Outcome]) -> str:
    lines = ["", f"{'MODE':13} {'CASES':>5} {'PASSED':>6} {'FAILED':>6}"]
    for mode in dict.fromkeys(o.case.mode for o in outcomes):
        mine = [o for o in outcomes if o.case.mode == mode]
        passed = sum(o.ok for o in mine)
        lines.append(f"{mode:13} {len(mine):5} {passed:6} {len(mine) - passed:6}")
    passed = sum(o.ok for o in outcomes)
    lines.append(f"{'all':13} {len(outcomes):5} {passed:6} {len(outcomes) - passed:6}")
    return "\n".join(lines)


USAGE = f"usage: run_mode_test.py <{'|'.join(MODES)}|all>"


def main(argv: list[str]) -> int:
    if argv in (["-h"], ["--help"]):  # asked for: on stdout, exit 0
        print(USAGE, __doc__.split("\n\n", 2)[2].rstrip(), sep="\n\n")
        return 0
    if len(argv) != 1 or argv[0] not in (*MODES, "all"):
        if not argv:
            why = "name a mode, or all"
        elif len(argv) > 1:
            why = f"one mode or all, not {len(argv)} arguments"
        else:
            why = f"unknown mode {argv[0][:40]!r}"
        print(USAGE, f"run_mode_test.py: error: {why}", sep="\n", file=sys.stderr)
        return 2
    _bootstrap()
    modes = list(MODES) if argv[0] == "all" else [argv[0]]
    print(f"{'MODE':13} {'CASE':34} {'':5} {'TIME':>8}  DETAIL")
    outcomes = run(modes)
    print(summary(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
