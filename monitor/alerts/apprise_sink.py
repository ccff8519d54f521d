"""Apprise sink: one notification to a list of Apprise URLs (chat, push, SMS services)."""

from __future__ import annotations

import logging

import apprise

from monitor.alerts.base import Sink, env_secret
from monitor.alerts.config import AppriseSinkConfig
from monitor.alerts.events import Alert, SinkError

log = logging.getLogger(__name__)


class AppriseSink(Sink):
    """Success when Apprise reports every URL notified; a failure resends to all of them.

    Apprise answers only True or False, not why a service refused, so every failure here is temporary.
    """

    config: AppriseSinkConfig

    def _apprise(self) -> apprise.Apprise:
        c = self.config
        urls = list(c.urls) + [env_secret(var, "apprise URL") for var in c.urls_env]
        ap = apprise.Apprise()
        for url in urls:
            if not ap.add(url):
                raise SinkError(f"not a valid Apprise URL: {url.split('://', 1)[0]}://...")
        return ap

    def send(self, alert: Alert) -> None:
        ap = self._apprise()
        attach = None
        evidence = alert.evidence if self.config.attach_evidence else None
        if evidence is not None and evidence.is_file():
            attach = apprise.AppriseAttachment(str(evidence))
        notify_type = apprise.NotifyType.WARNING if alert.severity == "warning" else apprise.NotifyType.INFO
        ok = ap.notify(title=alert.title(), body=alert.text(), notify_type=notify_type, attach=attach)
        if not ok:
            raise SinkError("apprise could not notify every URL (see the apprise log lines)")
