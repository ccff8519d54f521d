"""`monitor test-alert --config FILE`: one test alert to every sink, one line per sink, exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from alert_servers import SmtpServer, WebhookServer, free_port

REPO = Path(__file__).resolve().parent.parent


def _test_alert(config: dict, tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "monitor", "test-alert", "--config", str(path)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_every_sink_gets_a_test_alert_and_the_command_exits_0(tmp_path: Path, subprocess_env: dict) -> None:
    with WebhookServer() as chat, SmtpServer() as smtp:
        config = {"sources": [{"name": "line1", "folder": "inbox"}], "alerts": {"sinks": [
            {"type": "webhook", "name": "chat", "url": chat.url, "format": "slack"},
            {"type": "email", "name": "mail", "host": "127.0.0.1", "port": smtp.port, "security": "plain",
             "sender": "monitor@example", "to": ["qa@example"]},
        ]}}
        res = _test_alert(config, tmp_path, subprocess_env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert chat.received()[0]["text"].startswith("Test alert from anomaly-monitor")
        assert smtp.messages[0]["Subject"].startswith("[anomaly-monitor] Test alert")
    lines = res.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["chat", "mail"]
    assert all(": ok" in line for line in lines)


def test_a_failing_sink_is_reported_and_the_command_exits_1(tmp_path: Path, subprocess_env: dict) -> None:
    with WebhookServer() as chat:
        config = {"sources": [{"name": "line1", "folder": "inbox"}], "alerts": {"sinks": [
            {"type": "webhook", "name": "chat", "url": chat.url},
            {"type": "webhook", "name": "down", "url": f"http://127.0.0.1:{free_port()}/", "timeout_s": 2},
        ]}}
        res = _test_alert(config, tmp_path, subprocess_env)
    assert res.returncode == 1
    chat_line, down_line = res.stdout.splitlines()
    assert chat_line.startswith("chat: ok")
    assert down_line.startswith("down: FAILED") and "ConnectionError" in down_line
