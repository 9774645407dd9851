"""Soak test of resume and outages (not run in CI): for ``--duration``
seconds, send files between two nodes while, at random moments, the sender
or the receiver is killed with SIGKILL and restarted, or (``--netns``, root)
one side's link is cut for a random time and restored. After every round
the file is sent again until it verifies (BLAKE3 of the stored file equals
the source's). At the end the receiver is restarted once the part expiry
has passed and the inbox must hold no part: nothing leaks.

    .venv/bin/python scripts/soak_resume.py --duration 3600 [--netns] [--size 64M] [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from actors.inbox import scan
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.netns import Host, TestNetwork
from peercrypt.testing.nodes import NodeProcess, blake3_file, parse_size, random_file, wait_until

MiB = 2**20
EXPIRY = 5.0  # the receiver's --part-expiry during the soak, seconds


@contextlib.contextmanager
def network(use_netns: bool) -> Iterator[tuple[TestNetwork | None, Host | None, Host | None]]:
    if not use_netns:
        yield None, None, None
        return
    with TestNetwork(groups=1, prefix="pcsoak") as net:
        yield net, net.add_host("s"), net.add_host("r")


def send(
    sender: NodeProcess, path: Path, receiver: NodeProcess, *extra: str
) -> subprocess.Popen[str]:
    argv = [*sender.argv[: sender.argv.index("--data-dir")], "--data-dir", str(sender.data_dir)]
    argv += ["send", str(path), receiver.host, str(receiver.port), "--json", "--force", *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--size", default="64M")
    ap.add_argument("--netns", action="store_true", help="also cut and restore links (root)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    size = parse_size(args.size)
    tally: Counter[str] = Counter()
    print(f"soak: seed {seed}, {args.duration:.0f} s, files of {size} bytes", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="pc-soak-") as tmp,
        network(args.netns) as (
            net,
            s_host,
            r_host,
        ),
    ):
        work = Path(tmp)
        key = new_network_key()

        def node(name: str, host: Host | None, *extra: str) -> NodeProcess:
            return NodeProcess(
                data_dir=work / name,
                network_key=key,
                host=host.ip if host else "127.0.0.1",
                netns=host.ns if host else None,
                extra_args=("--part-expiry", str(EXPIRY), "--max-retries", "20", *extra),
                start_timeout=60.0,
            ).start()

        receiver, sender = node("receiver", r_host), node("sender", s_host)
        deadline = time.monotonic() + args.duration
        round_ = 0
        while time.monotonic() < deadline:
            round_ += 1
            path = random_file(work / f"file{round_}.bin", size)
            actions = ["kill-receiver", "kill-sender"] + (
                ["cut-sender", "cut-receiver"] if net else []
            )
            action = rng.choice(actions)
            proc = send(sender, path, receiver, "-r", str(max(size // 4, MiB)), "--timeout", "6")
            time.sleep(rng.uniform(0.2, 3.5))
            if action.startswith("kill"):
                victim = receiver if action == "kill-receiver" else sender
                victim.kill()
                victim.start()
            else:
                assert net is not None and s_host is not None and r_host is not None
                host = s_host if action == "cut-sender" else r_host
                net.isolate(host)
                time.sleep(rng.uniform(0.5, 10.0))
                net.rejoin(host)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=120)
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            tally[action] += 1
            for _attempt in range(10):
                result = sender.send_result(
                    path, receiver.host, receiver.port, "--force", timeout=300
                )
                if result.returncode == 0:
                    break
                tally["resend-failed"] += 1
            else:
                sys.exit(f"round {round_} ({action}): never verified\n{result.describe()}")
            info = result.json
            if blake3_file(receiver.inbox / info["stored_as"]) != blake3_file(path):
                sys.exit(f"round {round_} ({action}): stored file differs (seed {seed})")
            tally["verified"] += 1
            tally["resumed"] += info["stats"].get("resumed_chunks", 0) > 0
            (receiver.inbox / info["stored_as"]).unlink()
            path.unlink()
            print(f"round {round_}: {action}, verified; {dict(tally)}", flush=True)
        # Nothing leaks: after the expiry a restarted receiver sweeps what is left.
        time.sleep(EXPIRY + 1)
        receiver.stop()
        receiver.start()
        wait_until(lambda: not scan(receiver.inbox).kept, 30, "the sweep")
        print(f"soak done: {dict(tally)}; no part left in the inbox (seed {seed})")
        for n in (sender, receiver):
            n.stop()


if __name__ == "__main__":
    main()
