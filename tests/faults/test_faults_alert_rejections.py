"""Class 12 of issue 11: a sink that refuses an alert for good must not hold its queue.

Before the fix a 400 was retried with backoff for `max_age_s` (a day), and every alert behind it waited.
Now a permanent refusal (HTTP 4xx other than 408/429, SMTP 5xx, a command's exit 65) parks the alert in
the sink's `rejected/` folder with the reason at once, and the next alert goes out without any backoff.
These tests use a retry backoff of 30 s: an alert that went out after a backoff would time them out.
"""

from __future__ import annotations

import logging
import smtplib
import sys
import time
from pathlib import Path

import pytest
from alert_fault_servers import RefusingSmtpServer, StatusServer
from alert_servers import alerts_config, anomaly, metric, wait_until

from monitor.alerts.dispatcher import AlertDispatcher
from monitor.alerts.events import PermanentSinkError, SinkError, http_error
from monitor.alerts.smtp import smtp_error

SLOW_RETRY = {"backoff_initial_s": 30.0, "backoff_max_s": 30.0}


def _webhook(name: str, url: str, **kw: object) -> dict:
    return {"type": "webhook", "name": name, "url": url, "cooldown_s": 0, "digest_after": 0, **kw}


def _email(name: str, port: int, to: list[str], **kw: object) -> dict:
    return {"type": "email", "name": name, "host": "127.0.0.1", "port": port, "security": "plain",
            "sender": "monitor@line.example", "to": to, "cooldown_s": 0, "digest_after": 0, "timeout_s": 5,
            **kw}


def _parked(outbox: Path, sink: str) -> list[Path]:
    return sorted((outbox / sink / "rejected").glob("*.json"))


def _waiting(outbox: Path, sink: str) -> list[Path]:
    return sorted((outbox / sink).glob("*.json"))


def _reason(path: Path) -> str:
    return path.with_name(path.name + ".reason.txt").read_text()


def test_http_status_classes() -> None:
    for status in (400, 401, 403, 404, 410, 413, 422):
        assert isinstance(http_error(status, "x"), PermanentSinkError), status
    for status in (408, 429, 500, 502, 503, 504, 302):
        error = http_error(status, "x")
        assert isinstance(error, SinkError) and not error.permanent, status


def test_smtp_reply_classes() -> None:
    assert smtp_error(smtplib.SMTPRecipientsRefused({"a@x": (550, b"no such user")}), "h").permanent
    assert smtp_error(smtplib.SMTPRecipientsRefused({"a@x": (553, b"malformed")}), "h").permanent
    # One recipient only busy: the whole message is worth another try.
    assert not smtp_error(smtplib.SMTPRecipientsRefused({"a@x": (550, b""), "b@x": (450, b"")}), "h").permanent
    assert smtp_error(smtplib.SMTPSenderRefused(553, b"bad sender", "m@x"), "h").permanent
    assert smtp_error(smtplib.SMTPDataError(554, b"spam"), "h").permanent
    assert not smtp_error(smtplib.SMTPDataError(451, b"try later"), "h").permanent
    # Log in first / wrong password: the sink's configuration, fixed by its operator, so retried.
    assert not smtp_error(smtplib.SMTPSenderRefused(530, b"auth required", "m@x"), "h").permanent
    assert not smtp_error(smtplib.SMTPAuthenticationError(535, b"bad login"), "h").permanent
    assert not smtp_error(ConnectionRefusedError(111, "refused"), "h").permanent


def test_a_400_is_parked_at_once_and_the_next_alert_goes_out_without_waiting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox = tmp_path / "outbox"
    with StatusServer(lambda body, n: 400 if body["source"] == "bad" else 200) as server:
        d = AlertDispatcher(alerts_config([_webhook("rj-400", server.url)], **SLOW_RETRY), outbox)
        d.start()
        try:
            with caplog.at_level(logging.INFO, logger="monitor.alerts"):
                started = time.monotonic()
                d.notify_verdict(anomaly("bad", 0))
                d.notify_verdict(anomaly("good", 1))
                wait_until(lambda: server.sources() == ["good"], timeout=10)
                elapsed = time.monotonic() - started
        finally:
            d.stop()
    assert elapsed < 10  # far below the 30 s backoff a temporary failure would have cost
    assert server.statuses("bad") == [400]  # tried once, never again
    parked = _parked(outbox, "rj-400")
    assert len(parked) == 1 and _waiting(outbox, "rj-400") == []
    assert "HTTP 400" in _reason(parked[0]) and "refused by the test" in _reason(parked[0])
    assert metric("alerts_rejected_total", "rj-400") == 1
    assert metric("alerts_failed_total", "rj-400") == 0
    assert metric("alerts_sent_total", "rj-400") == 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert_rejected")]
    assert len(lines) == 1 and "sink=rj-400" in lines[0] and "reason=HTTP 400" in lines[0]
    assert parked[0].name.endswith(lines[0].split(" id=")[1].split(" ")[0] + ".json")


@pytest.mark.parametrize("status", [401, 404, 410, 413, 422])
def test_every_4xx_but_408_and_429_is_permanent(tmp_path: Path, status: int) -> None:
    with StatusServer(lambda body, n: status if body["source"] == "bad" else 200) as server:
        d = AlertDispatcher(alerts_config([_webhook(f"rj-{status}", server.url)], **SLOW_RETRY), tmp_path / "o")
        d.start()
        try:
            d.notify_verdict(anomaly("bad", 0))
            d.notify_verdict(anomaly("good", 1))
            wait_until(lambda: server.sources() == ["good"], timeout=10)
        finally:
            d.stop()
    assert len(_parked(tmp_path / "o", f"rj-{status}")) == 1


@pytest.mark.parametrize("status", [503, 429, 408, 500])
def test_temporary_answers_are_retried_with_backoff_and_delivered(tmp_path: Path, status: int) -> None:
    with StatusServer(lambda body, n: status if n <= 2 else 200) as server:
        d = AlertDispatcher(alerts_config([_webhook(f"tmp-{status}", server.url)]), tmp_path / "o")
        d.start()
        try:
            d.notify_verdict(anomaly("line1", 0))
            wait_until(lambda: server.sources() == ["line1"], timeout=10)
        finally:
            d.stop()
    assert server.statuses("line1") == [status, status, 200]
    assert metric("alerts_failed_total", f"tmp-{status}") == 2
    assert metric("alerts_rejected_total", f"tmp-{status}") == 0
    assert _parked(tmp_path / "o", f"tmp-{status}") == []


def test_a_refused_digest_is_sent_again_alert_by_alert(tmp_path: Path) -> None:
    # A digest too large for the server must not take its anomalies down with it.
    outbox = tmp_path / "outbox"
    config = alerts_config([_webhook("rj-digest", "http://127.0.0.1:9", digest_after=2)], **SLOW_RETRY)
    early = AlertDispatcher(config, outbox)  # never started: the alerts wait on disk
    for i in range(3):
        early.notify_verdict(anomaly("line1", i))
    with StatusServer(lambda body, n: 413 if len(body["anomalies"]) > 1 else 200) as server:
        config = alerts_config([_webhook("rj-digest", server.url, digest_after=2)], **SLOW_RETRY)
        d = AlertDispatcher(config, outbox)
        d.start()
        try:
            wait_until(lambda: len(server.accepted) == 3, timeout=10)
        finally:
            d.stop()
    assert [a["anomalies"][0]["score"] for a in server.accepted] == [0.5, 0.501, 0.502]
    assert _parked(outbox, "rj-digest") == []
    assert metric("alerts_rejected_total", "rj-digest") == 0


def test_alertmanager_answering_400_is_permanent(tmp_path: Path) -> None:
    with StatusServer(lambda body, n: 400 if body["labels"]["source"] == "bad" else 200) as server:
        sink = {"type": "alertmanager", "name": "rj-am", "url": server.url, "cooldown_s": 0, "digest_after": 0}
        d = AlertDispatcher(alerts_config([sink], **SLOW_RETRY), tmp_path / "o")
        d.start()
        try:
            d.notify_verdict(anomaly("bad", 0))
            d.notify_verdict(anomaly("good", 1))
            wait_until(lambda: server.sources() == ["good"], timeout=10)
        finally:
            d.stop()
    assert len(_parked(tmp_path / "o", "rj-am")) == 1


def test_smtp_550_for_the_recipient_is_parked_at_once(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    with RefusingSmtpServer(rcpt=lambda addr, n: "550 5.1.1 no such user" if addr.startswith("nobody@")
                            else "250 OK") as smtp:
        d = AlertDispatcher(alerts_config([_email("rj-mail", smtp.port, ["nobody@plant.example"])],
                                          **SLOW_RETRY), outbox)
        d.start()
        try:
            d.notify_verdict(anomaly("line1", 0))
            d.notify_verdict(anomaly("line1", 1))
            wait_until(lambda: metric("alerts_rejected_total", "rj-mail") == 2, timeout=10)
        finally:
            d.stop()
    parked = _parked(outbox, "rj-mail")
    assert len(parked) == 2 and _waiting(outbox, "rj-mail") == []
    assert "550" in _reason(parked[0]) and "no such user" in _reason(parked[0])
    assert metric("alerts_failed_total", "rj-mail") == 0


def test_smtp_554_for_one_message_parks_it_and_the_next_mail_goes_out_at_once(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    refuse = lambda msg: "554 5.6.0 content refused" if "bad" in str(msg["Subject"]) else "250 OK"  # noqa: E731
    with RefusingSmtpServer(data=refuse) as smtp:
        d = AlertDispatcher(alerts_config([_email("rj-mail-data", smtp.port, ["qa@plant.example"])],
                                          **SLOW_RETRY), outbox)
        d.start()
        try:
            d.notify_verdict(anomaly("bad", 0))
            d.notify_verdict(anomaly("good", 1))
            wait_until(lambda: len(smtp.messages) == 1, timeout=10)
        finally:
            d.stop()
    assert "Anomaly on good" in smtp.subjects()[0]
    parked = _parked(outbox, "rj-mail-data")
    assert len(parked) == 1 and "554" in _reason(parked[0])


def test_smtp_450_for_the_recipient_is_retried(tmp_path: Path) -> None:
    with RefusingSmtpServer(rcpt=lambda addr, n: "450 4.2.1 mailbox busy" if n <= 2 else "250 OK") as smtp:
        d = AlertDispatcher(alerts_config([_email("tmp-mail", smtp.port, ["qa@plant.example"])]), tmp_path / "o")
        d.start()
        try:
            d.notify_verdict(anomaly("line1", 0))
            wait_until(lambda: len(smtp.messages) == 1, timeout=10)
        finally:
            d.stop()
    assert metric("alerts_failed_total", "tmp-mail") == 2
    assert _parked(tmp_path / "o", "tmp-mail") == []


def test_a_command_exiting_65_rejects_for_good_any_other_status_is_retried(tmp_path: Path) -> None:
    # The hook exits 65 (EX_DATAERR) for source "bad", 75 (EX_TEMPFAIL) the first time for "flaky".
    marker = tmp_path / "flaky-seen"
    hook = ("import json, os, sys; src = json.load(sys.stdin)['source']\n"
            "if src == 'bad': sys.exit(65)\n"
            f"if src == 'flaky' and not os.path.exists({str(marker)!r}):\n"
            f"    open({str(marker)!r}, 'w').close(); sys.exit(75)\n"
            f"open({str(tmp_path / 'done')!r}, 'a').write(src + '\\n')\n")
    sink = {"type": "command", "name": "rj-cmd", "argv": [sys.executable, "-c", hook], "cooldown_s": 0,
            "digest_after": 0}
    d = AlertDispatcher(alerts_config([sink]), tmp_path / "o")
    d.start()
    try:
        d.notify_verdict(anomaly("bad", 0))
        d.notify_verdict(anomaly("flaky", 1))
        wait_until(lambda: (tmp_path / "done").exists(), timeout=20)
    finally:
        d.stop()
    assert (tmp_path / "done").read_text() == "flaky\n"
    parked = _parked(tmp_path / "o", "rj-cmd")
    assert len(parked) == 1 and "status 65" in _reason(parked[0])
    assert metric("alerts_failed_total", "rj-cmd") == 1
