"""Run the real daemon as a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml
from netutil import free_port, wait_until

__all__ = ["DaemonProcess", "NotifySocket", "free_port", "wait_until"]

REPO = Path(__file__).resolve().parent.parent


class DaemonProcess:
    """`monitor run --config FILE` in a subprocess, with its config written into `workdir`."""

    def __init__(self, workdir: Path, config: dict, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = env or dict(os.environ)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "daemon.log"
        self.starts = 0

    @property
    def journal_path(self) -> Path:
        return self.workdir / self.config.get("output", {}).get("journal", "var/journal.jsonl")

    def start(self, wait_ready: bool = True, timeout: float = 90) -> DaemonProcess:
        before = len([r for r in self.records() if r.get("event") == "daemon_start"])
        self.starts += 1
        log = open(self.log_path, "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(self.config_path)],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        if wait_ready:
            def ready() -> bool:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                return len([r for r in self.records() if r.get("event") == "daemon_start"]) > before
            wait_until(ready, timeout)
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def records(self) -> list[dict]:
        if not self.journal_path.exists():
            return []
        out = []
        for line in self.journal_path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def verdicts(self) -> list[dict]:
        return [r for r in self.records() if "score" in r]

    def wait_for_verdicts(self, n: int, timeout: float = 30) -> list[dict]:
        wait_until(lambda: len(self.verdicts()) >= n, timeout)
        return self.verdicts()

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class NotifySocket:
    """A datagram socket at `path` in systemd's place (NOTIFY_SOCKET): `drain` adds what the daemon said since to
    `messages` and returns them all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except TimeoutError:
            return self.messages

    def close(self) -> None:
        self.sock.close()
