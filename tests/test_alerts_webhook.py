"""Webhook sink against a real local HTTP server: retries, order, payload shapes, headers from env."""

from __future__ import annotations

from pathlib import Path

import pytest
from alert_servers import WebhookServer, alerts_config, anomaly, metric, wait_until

from monitor.alerts.dispatcher import AlertDispatcher


def _webhook(name: str, url: str, **kw: object) -> dict:
    return {"type": "webhook", "name": name, "url": url, "cooldown_s": 0, "digest_after": 0, **kw}


def test_server_failing_first_requests_loses_nothing_and_keeps_order_per_source(tmp_path: Path) -> None:
    with WebhookServer(fail_first=4) as server:
        d = AlertDispatcher(alerts_config([_webhook("wh-flaky", server.url)]), tmp_path / "outbox")
        d.start()
        try:
            for i in range(10):
                d.notify_verdict(anomaly("line1", i))
                d.notify_verdict(anomaly("line2", i))
            assert wait_until(lambda: len(server.received()) == 20, timeout=20)
        finally:
            d.stop()
    got = server.received()
    for source in ("line1", "line2"):
        scores = [p["anomalies"][0]["score"] for p in got if p["source"] == source]
        assert scores == [0.5 + i / 1000 for i in range(10)]
    assert server.attempts == 24
    assert metric("alerts_failed_total", "wh-flaky") == 4
    assert metric("alerts_sent_total", "wh-flaky") == 20
    assert list((tmp_path / "outbox" / "wh-flaky").glob("*.json")) == []


def test_generic_json_payload_carries_the_journal_line(tmp_path: Path) -> None:
    verdict = anomaly("line1", 7, evidence=tmp_path / "ev.png")
    with WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_webhook("wh-json", server.url)]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(verdict)
        assert wait_until(lambda: len(server.received()) == 1)
        d.stop()
    payload = server.received()[0]
    assert payload["kind"] == "anomaly"
    assert payload["source"] == "line1"
    assert payload["anomalies"] == [verdict.to_json()]
    assert "0.507" in payload["title"]
    assert payload["suppressed"] is None


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("slack", lambda p: p["text"].startswith("Anomaly on line1") and p["blocks"][0]["type"] == "header"),
        ("mattermost", lambda p: "Anomaly on line1" in p["text"] and p["channel"] == "qa"),
        ("teams", lambda p: p["type"] == "message"
         and p["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
         and "Anomaly on line1" in p["attachments"][0]["content"]["body"][0]["text"]),
    ],
)
def test_chat_formats_have_the_shape_each_service_expects(tmp_path: Path, fmt: str, check) -> None:  # noqa: ANN001
    with WebhookServer() as server:
        sink = _webhook(f"wh-{fmt}", server.url, format=fmt, channel="qa")
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly("line1", 1))
        assert wait_until(lambda: len(server.received()) == 1)
        d.stop()
    assert check(server.received()[0])


def test_headers_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CHAT_TOKEN", "Bearer s3cret")
    with WebhookServer() as server:
        sink = _webhook("wh-headers", server.url, headers={"X-Line": "3"},
                        headers_env={"Authorization": "TEST_CHAT_TOKEN"})
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly())
        assert wait_until(lambda: len(server.requests) == 1)
        d.stop()
    headers = server.requests[0]["headers"]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Line"] == "3"


def test_missing_header_variable_keeps_the_alert_and_counts_failures(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_TOKEN", raising=False)
    with WebhookServer() as server:
        sink = _webhook("wh-noenv", server.url, headers_env={"Authorization": "TEST_UNSET_TOKEN"})
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly())
        assert wait_until(lambda: metric("alerts_failed_total", "wh-noenv") >= 2)
        d.stop()
        assert server.attempts == 0
    assert len(list((tmp_path / "outbox" / "wh-noenv").glob("*.json"))) == 1
