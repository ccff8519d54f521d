"""Webhook sink: POST JSON shaped for Slack, Mattermost, Microsoft Teams, or the generic payload."""

from __future__ import annotations

import requests

from monitor.alerts.base import Sink, env_secret, headers_from_env
from monitor.alerts.config import WebhookSinkConfig
from monitor.alerts.events import Alert, SinkError, http_error

_COLOURS = {"warning": "#d70000", "info": "#2e7d32"}
# The words of the link to an anomaly's detail view: the text body shows the URL too, inside a code block
# where chat services do not make it clickable.
LINK_TEXT = "Open on the review page"


def slack_payload(alert: Alert, username: str | None = None) -> dict:
    """Slack incoming-webhook message: a text fallback plus a header and a section block (and a link)."""
    body: dict = {
        "text": alert.title(),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": alert.title()[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "```" + alert.text()[:2900] + "```"}},
        ],
    }
    if alert.url:
        body["blocks"].append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{alert.url}|{LINK_TEXT}>"}})
    if username:
        body["username"] = username
    return body


def mattermost_payload(alert: Alert, username: str | None = None, channel: str | None = None) -> dict:
    """Mattermost incoming-webhook message (markdown text)."""
    body: dict = {"text": f"#### {alert.title()}\n```\n{alert.text()}\n```"}
    if alert.url:
        body["text"] += f"\n[{LINK_TEXT}]({alert.url})"
    if username:
        body["username"] = username
    if channel:
        body["channel"] = channel
    return body


def teams_payload(alert: Alert) -> dict:
    """Microsoft Teams (a Workflows "when a webhook request is received" flow): an Adaptive Card."""
    facts = [{"title": k, "value": v} for k, _, v in (line.partition(": ") for line in alert.lines())
             if not k.startswith(("-", " ", "("))]
    details = [line for line in alert.lines() if line.startswith(("-", " ", "("))]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": True, "text": alert.title(),
             "color": "Attention" if alert.severity == "warning" else "Good"},
            {"type": "FactSet", "facts": facts},
        ] + ([{"type": "TextBlock", "wrap": True, "fontType": "Monospace", "text": "\n\n".join(details)}]
             if details else []),
    }
    if alert.url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": LINK_TEXT, "url": alert.url}]
    return {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
    }


class WebhookSink(Sink):
    """POST the alert; any 2xx is success, anything else (or no answer in timeout_s) a failure.

    A 4xx other than 408 and 429 is a permanent rejection (see http_error): the alert is parked, not retried.
    """

    config: WebhookSinkConfig

    def __init__(self, config: WebhookSinkConfig) -> None:
        super().__init__(config)
        self._session = requests.Session()

    def body(self, alert: Alert) -> dict:
        fmt = self.config.format
        if fmt == "slack":
            return slack_payload(alert, self.config.username)
        if fmt == "mattermost":
            return mattermost_payload(alert, self.config.username, self.config.channel)
        if fmt == "teams":
            return teams_payload(alert)
        return alert.payload()

    def send(self, alert: Alert) -> None:
        c = self.config
        url = env_secret(c.url_env, "webhook URL") if c.url_env else c.url
        headers = headers_from_env(c.headers, c.headers_env)
        try:
            resp = self._session.post(url, json=self.body(alert), headers=headers, timeout=c.timeout_s,
                                      verify=c.verify_tls)
        except requests.RequestException as exc:
            raise SinkError(f"POST failed: {type(exc).__name__}: {exc}") from None
        if not 200 <= resp.status_code < 300:
            raise http_error(resp.status_code, f"HTTP {resp.status_code}: {resp.text[:200]!r}")

    def close(self) -> None:
        self._session.close()
