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
TEMPLATE = REPO / "systemd" / "anomaly-monitor@.service"
UNITS = [UNIT, TEMPLATE]


def installed_unit(tmp_path: Path, unit: Path = UNIT) -> Path:
    """The unit with its install prefix pointed at a folder where its commands exist."""
    prefix = tmp_path / "opt"
    (prefix / "venv" / "bin").mkdir(parents=True, exist_ok=True)
    monitor = shutil.which("monitor", path=str(Path(os.sys.executable).parent)) or shutil.which("monitor")
    assert monitor, "the monitor console script is installed in the venv"
    if not (prefix / "venv" / "bin" / "monitor").exists():
        (prefix / "venv" / "bin" / "monitor").symlink_to(monitor)
    out = tmp_path / unit.name
    out.write_text(unit.read_text().replace("/opt/anomaly-monitor", str(prefix)))
    return out


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (comments and section headers left out)."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_file_passes_systemd_analyze_verify(tmp_path, unit):
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is installed by scripts/install-system-deps.sh"
    res = subprocess.run([tool, "verify", str(installed_unit(tmp_path, unit))], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # systemd-analyze warns (an unknown key, a Type= this systemd does not know) on stderr with exit code 0.
    assert res.stderr.strip() == ""


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_file_is_hardened(tmp_path, unit):
    tool = shutil.which("systemd-analyze")
    res = subprocess.run([tool, "security", "--offline=yes", str(installed_unit(tmp_path, unit))],
                         capture_output=True, text=True, timeout=60)
    line = [x for x in res.stdout.splitlines() if "Overall exposure level" in x][0]
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.5, line


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_reload_sends_sighup_to_the_main_process(unit):
    settings = unit_settings(unit)
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # notify-reload is refused by systemd < 253 (Debian 12 has 252): the unit would start as Type=simple.
    assert settings["Type"] == ["notify"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_runs_the_production_venv_as_the_service_user(unit):
    settings = unit_settings(unit)
    assert settings["ExecStart"][0].startswith("/opt/anomaly-monitor/venv/bin/monitor run --config /etc/")
    assert settings["User"] == ["anomaly-monitor"]
    sysusers = (REPO / "systemd" / "sysusers.d" / "anomaly-monitor.conf").read_text()
    assert "\nu anomaly-monitor " in sysusers


def test_template_instance_has_its_own_config_state_and_folders(tmp_path):
    settings = unit_settings(TEMPLATE)
    assert settings["ExecStart"] == ["/opt/anomaly-monitor/venv/bin/monitor run --config /etc/anomaly-monitor/%i.yaml"]
    assert settings["StateDirectory"] == ["anomaly-monitor/%i"]
    assert settings["WorkingDirectory"] == ["/var/lib/anomaly-monitor/%i"]
    assert settings["ReadWritePaths"] == ["/var/lib/anomaly-monitor/%i /srv/inspection/%i"]
    # An instance name (what `systemctl start anomaly-monitor@line2` loads) verifies too.
    tool = shutil.which("systemd-analyze")
    unit = installed_unit(tmp_path, TEMPLATE)
    instance = unit.with_name("anomaly-monitor@line2.service")
    unit.rename(instance)
    res = subprocess.run([tool, "verify", str(instance)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stdout + res.stderr


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
    from daemon_proc import DaemonProcess, NotifySocket, wait_until

    notify = NotifySocket(tmp_path / "notify.sock")
    env = dict(subprocess_env, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000")
    config = {"model": str(tiny_bundle), "sources": [{"name": "a", "folder": "inbox"}], "metrics": {"enabled": False}}
    proc = DaemonProcess(tmp_path / "d", config, env)
    messages, drain = notify.messages, notify.drain
    try:
        proc.start()
        wait_until(lambda: any("WATCHDOG=1" in m for m in drain()), timeout=15)
        assert proc.terminate() == 0
        drain()
    finally:
        proc.kill()
        notify.close()
    assert any(m.startswith("READY=1") for m in messages)
    assert messages[-1] == "STOPPING=1"
