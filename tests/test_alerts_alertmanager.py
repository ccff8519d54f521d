"""Alertmanager sink against Debian's real prometheus-alertmanager, forwarding to a local webhook."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from alert_servers import Alertmanager, WebhookServer, alerts_config, anomaly, wait_until

from monitor.alerts.dispatcher import AlertDispatcher
from monitor.records import SourceEvent


@pytest.fixture
def receiver_and_alertmanager(tmp_path: Path):
    with WebhookServer() as receiver, Alertmanager(tmp_path / "am", receiver.url) as am:
        yield receiver, am


def _am_sink(name: str, url: str, **kw: object) -> dict:
    return {"type": "alertmanager", "name": name, "url": url, "labels": {"site": "plant-a"},
            "events": ["anomaly", "camera_lost", "camera_found"], **kw}


def _alerts(receiver: WebhookServer) -> list[dict]:
    return [a for payload in receiver.received() for a in payload["alerts"]]


def test_an_anomaly_reaches_the_alertmanager_receiver_with_labels_and_annotations(
        tmp_path: Path, receiver_and_alertmanager) -> None:  # noqa: ANN001
    receiver, am = receiver_and_alertmanager
    evidence = tmp_path / "ev.png"
    d = AlertDispatcher(alerts_config([_am_sink("am", am.url)]), tmp_path / "outbox")
    d.start()
    d.notify_verdict(anomaly("line1", 9, evidence=evidence))
    assert wait_until(lambda: _alerts(receiver), timeout=15)
    d.stop()
    alert = _alerts(receiver)[0]
    assert alert["status"] == "firing"
    assert alert["labels"] == {"alertname": "InspectionAnomaly", "source": "line1", "severity": "warning",
                               "site": "plant-a"}
    assert alert["annotations"]["score"] == "0.509"
    assert alert["annotations"]["threshold"] == "0.1"
    assert alert["annotations"]["evidence"] == str(evidence)


def test_alerts_carry_an_end_time_so_they_resolve_by_themselves(tmp_path: Path,
                                                                 receiver_and_alertmanager) -> None:  # noqa: ANN001
    receiver, am = receiver_and_alertmanager
    sink = _am_sink("am-resolve", am.url, resolve_after_s=2)
    d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
    d.start()
    d.notify_verdict(anomaly("line2", 1))
    assert wait_until(lambda: any(a["status"] == "resolved" for a in _alerts(receiver)), timeout=20)
    d.stop()


def test_camera_found_resolves_camera_lost(tmp_path: Path, receiver_and_alertmanager) -> None:  # noqa: ANN001
    receiver, am = receiver_and_alertmanager
    d = AlertDispatcher(alerts_config([_am_sink("am-camera", am.url)]), tmp_path / "outbox")
    d.start()
    d.notify_event(SourceEvent("cam1", "camera_lost", time.time(), "no frame for 30 s"))

    def active() -> list[str]:
        got = requests.get(f"{am.url}/api/v2/alerts", timeout=2).json()
        return [a["labels"]["alertname"] for a in got if a["status"]["state"] == "active"]

    assert wait_until(lambda: active() == ["CameraLost"], timeout=10)
    d.notify_event(SourceEvent("cam1", "camera_found", time.time()))
    assert wait_until(lambda: any(a["status"] == "resolved" and a["labels"]["alertname"] == "CameraLost"
                                  for a in _alerts(receiver)), timeout=20)
    d.stop()
