"""E-mail sink against aiosmtpd, a real SMTP server on loopback."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from alert_servers import (
    SmtpServer,
    alerts_config,
    anomaly,
    free_port,
    metric,
    self_signed_certificate,
    wait_until,
)

from monitor.alerts.dispatcher import AlertDispatcher

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def _email(name: str, port: int, **kw: object) -> dict:
    return {"type": "email", "name": name, "host": "127.0.0.1", "port": port, "security": "plain",
            "sender": "monitor@line.example", "to": ["qa@plant.example", "lead@plant.example"],
            "cooldown_s": 0, "digest_after": 0, "timeout_s": 5, **kw}


@pytest.fixture
def evidence_png(tmp_path: Path) -> Path:
    path = tmp_path / "evidence" / "line1-0001.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), np.full((16, 48), 200, np.uint8))
    return path


def test_mail_arrives_with_the_evidence_png_attached(tmp_path: Path, evidence_png: Path) -> None:
    with SmtpServer() as smtp:
        d = AlertDispatcher(alerts_config([_email("mail", smtp.port)]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly("line1", 1, evidence=evidence_png))
        assert wait_until(lambda: len(smtp.messages) == 1)
        d.stop()
    msg = smtp.messages[0]
    assert smtp.envelopes[0] == ("monitor@line.example", ["qa@plant.example", "lead@plant.example"])
    assert "Anomaly on line1" in msg["Subject"]
    body = msg.get_body(preferencelist=("plain",)).get_content()
    assert "source: line1" in body and "score 0.501" in body and "threshold 0.1" in body
    attachments = list(msg.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["line1-0001.png"]
    assert attachments[0].get_content_type() == "image/png"
    assert attachments[0].get_content() == evidence_png.read_bytes()


def test_a_server_down_at_first_gets_the_mail_once_it_is_up(tmp_path: Path, evidence_png: Path) -> None:
    port = free_port()
    d = AlertDispatcher(alerts_config([_email("mail-late", port)]), tmp_path / "outbox")
    d.start()
    d.notify_verdict(anomaly("line1", 2, evidence=evidence_png))
    assert wait_until(lambda: metric("alerts_failed_total", "mail-late") >= 2)
    with SmtpServer(port=port) as smtp:
        assert wait_until(lambda: len(smtp.messages) == 1)
        d.stop()
    assert "score 0.502" in smtp.messages[0].get_body(preferencelist=("plain",)).get_content()
    assert metric("alerts_sent_total", "mail-late") == 1


def test_login_uses_the_password_from_a_credentials_file(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("hunter2\n")
    with SmtpServer(login=("monitor", "hunter2")) as smtp:
        sink = _email("mail-login", smtp.port, username="monitor", password_file=str(secret))
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly("line1", 3))
        assert wait_until(lambda: len(smtp.messages) == 1)
        d.stop()


def test_a_wrong_password_is_a_failed_delivery_that_keeps_the_alert(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "wrong")
    with SmtpServer(login=("monitor", "hunter2")) as smtp:
        sink = _email("mail-badlogin", smtp.port, username="monitor", password_env="TEST_SMTP_PASSWORD")
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly("line1", 4))
        assert wait_until(lambda: metric("alerts_failed_total", "mail-badlogin") >= 1)
        d.stop()
        assert smtp.messages == []
    assert len(list((tmp_path / "outbox" / "mail-badlogin").glob("*.json"))) == 1


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_encrypted_connections_verify_the_server_certificate(tmp_path: Path, security: str) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with SmtpServer(tls=(cert, key), implicit_tls=security == "tls") as smtp:
        sink = _email(f"mail-{security}", smtp.port, security=security, ca_file=str(cert))
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly("line1", 5))
        assert wait_until(lambda: len(smtp.messages) == 1)
        d.stop()


def test_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    with SmtpServer(tls=(cert, key)) as smtp:
        d = AlertDispatcher(alerts_config([_email("mail-untrusted", smtp.port, security="starttls")]),
                            tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly("line1", 6))
        assert wait_until(lambda: metric("alerts_failed_total", "mail-untrusted") >= 1)
        d.stop()
        assert smtp.messages == []
