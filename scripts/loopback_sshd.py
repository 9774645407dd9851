"""An sshd of our own on 127.0.0.1, for the benchmarks that compare with ssh/scp.

A throwaway host key and client key in a folder of the caller's; nothing of
the machine's ssh configuration is used or changed. sshd runs in the
foreground (``-D``) and logs to a file in that folder (``-e``), so when it
refuses to start or to admit the key, the error says what it said.

Two things this needs that a freshly installed openssh-server does not give
outside its service unit: the privilege separation directory ``/run/sshd``
(compiled into sshd; the unit's ``RuntimeDirectory`` creates it, so without
it sshd exits at once with "Missing privilege separation directory") and
running as root (scp to ``root@127.0.0.1``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LoopbackSshd:
    """An sshd on 127.0.0.1:``port`` that admits one temporary key for root.

    ``ssh`` is the client's argv up to the destination (``-p PORT``, the key,
    no known-hosts file, batch mode); ``scp_options`` are the same options
    for scp (``-P PORT``). Raises ``RuntimeError`` (with sshd's last log
    lines) if this machine cannot run one or it does not admit the key
    within ``timeout`` seconds."""

    def __init__(self, work: Path, timeout: float = 30.0) -> None:
        missing = [t for t in ("ssh-keygen", "ssh", "scp") if shutil.which(t) is None]
        if not Path(SSHD).exists() or missing:
            raise RuntimeError(f"no {' '.join(missing) or 'sshd'} on this machine")
        if os.geteuid() != 0:
            raise RuntimeError("an sshd of our own for root@127.0.0.1 needs root")
        self.dir = work / "ssh"
        self.dir.mkdir(mode=0o700)
        for name in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)],
                check=True,
            )
        auth = self.dir / "authorized_keys"
        shutil.copy(self.dir / "client.pub", auth)
        auth.chmod(0o600)
        self.port = free_port()
        config = self.dir / "sshd_config"
        # StrictModes no: the keys live under /tmp or a tmpfs, world-writable
        # folders whose modes StrictModes would refuse the authorized key for.
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host'}\n"
            f"AuthorizedKeysFile {auth}\nPasswordAuthentication no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            f"PidFile {self.dir / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        )
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        self.log = self.dir / "sshd.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log
            )
        common = [
            "-i", str(self.dir / "client"), "-F", "/dev/null",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        self.ssh = ["ssh", "-p", str(self.port), *common]
        self.scp_options = ["-P", str(self.port), *common]
        try:
            self._wait_admitted(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_admitted(self, timeout: float) -> None:
        """Until sshd says it listens (or exits), then one login with the key."""
        deadline = time.monotonic() + timeout
        while b"Server listening" not in self.log.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {self.said()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not listen within {timeout:.0f} s: {self.said()}")
            time.sleep(0.05)
        left = max(1.0, deadline - time.monotonic())
        try:
            probe = subprocess.run(
                [*self.ssh, "root@127.0.0.1", "true"], capture_output=True, timeout=left
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"ssh with the key hung; sshd: {self.said()}") from None
        if probe.returncode != 0:
            client = probe.stderr.decode(errors="replace").strip()
            raise RuntimeError(f"ssh with the key failed ({client}); sshd: {self.said()}")

    def said(self) -> str:
        """sshd's last log lines, on one line."""
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return " / ".join(lines[-3:]) or "nothing"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
