"""The systemd unit verifies, and the daemon speaks the notify protocol."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from monitor import systemd

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "anomaly-monitor.service"


def installed_unit(tmp_path: Path) -> Path:
    """The unit with its install prefix pointed at a folder where its commands exist."""
    prefix = tmp_path / "opt"
    (prefix / ".venv" / "bin").mkdir(parents=True)
    monitor = shutil.which("monitor", path=str(Path(os.sys.executable).parent)) or shutil.which("monitor")
    assert monitor, "the monitor console script is installed in the venv"
    (prefix / ".venv" / "bin" / "monitor").symlink_to(monitor)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/anomaly-monitor", str(prefix)))
    return unit


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is installed by scripts/install-system-deps.sh"
    res = subprocess.run([tool, "verify", str(installed_unit(tmp_path))], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip() == ""


def test_unit_file_is_hardened(tmp_path):
    tool = shutil.which("systemd-analyze")
    res = subprocess.run([tool, "security", "--offline=yes", str(installed_unit(tmp_path))], capture_output=True,
                         text=True, timeout=60)
    line = [x for x in res.stdout.splitlines() if "Overall exposure level" in x][0]
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.5, line


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_notify_sends_a_datagram_to_the_socket(notify_socket):
    assert systemd.notify("READY=1\nSTATUS=ok") is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=ok"


def test_notify_never_blocks_when_the_receiver_stops_reading(notify_socket):
    # Far beyond the socket's queue: a blocking send would hang here (pytest-timeout ends the test).
    results = [systemd.notify("WATCHDOG=1") for _ in range(200)]
    assert results[0] is True and results[-1] is False


def test_notify_without_systemd_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog is meant for another process
    assert systemd.watchdog_interval() is None


def test_daemon_reports_ready_pings_the_watchdog_and_says_stopping(tmp_path, tiny_bundle, subprocess_env):
    from daemon_proc import DaemonProcess, wait_until

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = dict(subprocess_env, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    config = {"model": str(tiny_bundle), "sources": [{"name": "a", "folder": "inbox"}], "metrics": {"enabled": False}}
    proc = DaemonProcess(tmp_path / "d", config, env)
    messages: list[str] = []

    def drain() -> list[str]:
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except TimeoutError:
            return messages

    try:
        proc.start()
        wait_until(lambda: any("WATCHDOG=1" in m for m in drain()), timeout=15)
        assert proc.terminate() == 0
        drain()
    finally:
        proc.kill()
        sock.close()
    assert any(m.startswith("READY=1") for m in messages)
    assert messages[-1] == "STOPPING=1"
