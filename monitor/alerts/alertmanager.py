"""Alertmanager sink: POST /api/v2/alerts; alerts carry endsAt so they resolve by themselves."""

from __future__ import annotations

import time

import requests

from monitor.alerts.base import Sink, headers_from_env
from monitor.alerts.config import AlertmanagerSinkConfig
from monitor.alerts.events import Alert, SinkError, http_error, iso

_EVENT_ALERTNAMES = {"camera_lost": "CameraLost", "camera_found": "CameraLost",
                     "daemon_start": "AnomalyMonitorStarted", "daemon_stop": "AnomalyMonitorStopped",
                     "test": "AnomalyMonitorTest"}


class AlertmanagerSink(Sink):
    """Anomalies become `alertname` alerts; camera_found resolves the CameraLost alert at once."""

    config: AlertmanagerSinkConfig

    def __init__(self, config: AlertmanagerSinkConfig) -> None:
        super().__init__(config)
        self._session = requests.Session()

    def alerts(self, alert: Alert) -> list[dict]:
        """The JSON body: a list with one postable alert."""
        c = self.config
        labels = {**c.labels, "source": alert.source}
        annotations = {"summary": alert.title(), "description": alert.text()}
        starts = alert.created
        ends = alert.created + c.resolve_after_s
        if alert.kind == "anomaly":
            labels["alertname"] = c.alertname
            labels["severity"] = c.severity
            latest = alert.latest or {}
            annotations.update(
                score=f"{latest.get('score', alert.max_score or 0):.6g}", threshold=f"{latest.get('threshold', 0):.6g}",
                evidence=latest.get("evidence") or "", path=latest.get("path") or "",
                count=str(len(alert.verdicts) + (alert.suppressed or {}).get("count", 0)),
            )
            starts = min(v["time"] for v in alert.verdicts) if alert.verdicts else starts
            # Delivered late (Alertmanager was down): it must still fire, not arrive already resolved.
            ends = max(alert.created, time.time()) + c.resolve_after_s
        else:
            labels["alertname"] = _EVENT_ALERTNAMES.get(alert.kind, alert.kind)
            labels["severity"] = alert.severity
            if alert.kind == "camera_lost":
                ends = alert.created + 10 * 365 * 86400.0  # until the camera_found resolves it
            elif alert.kind == "camera_found":
                starts, ends = alert.created - 1, alert.created
            if alert.event and alert.event.get("detail"):
                annotations["detail"] = alert.event["detail"]
        if alert.url:
            annotations["review_url"] = alert.url
        body = {"labels": labels, "annotations": annotations, "startsAt": iso(starts), "endsAt": iso(ends)}
        # Alertmanager's UI and most receivers show generatorURL as the alert's "Source" link: the anomaly's
        # detail view, unless the config names a generator of its own.
        generator = c.generator_url or alert.url
        if generator:
            body["generatorURL"] = generator
        return [body]

    def send(self, alert: Alert) -> None:
        c = self.config
        url = c.url.rstrip("/") + "/api/v2/alerts"
        headers = headers_from_env({}, c.headers_env)
        try:
            resp = self._session.post(url, json=self.alerts(alert), headers=headers, timeout=c.timeout_s,
                                      verify=c.verify_tls)
        except requests.RequestException as exc:
            raise SinkError(f"POST {url} failed: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            # A 400 (an alert Alertmanager cannot parse) is permanent; 5xx, 408 and 429 are retried.
            raise http_error(resp.status_code, f"HTTP {resp.status_code} from {url}: {resp.text[:200]!r}")

    def close(self) -> None:
        self._session.close()
