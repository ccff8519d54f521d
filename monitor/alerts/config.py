"""Schema of the `alerts:` config section and the table of sink types (imported by monitor.config).

Secrets never live in the config: header values, passwords and secret URLs are read from environment
variables (`*_env`) or files (`*_file`) when a sink is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from monitor.schema import EnvName, Name, StrictModel

EventKind = Literal["anomaly", "camera_lost", "camera_found", "daemon_start", "daemon_stop"]


class _SinkBase(StrictModel):
    """What every sink has: a name (the metrics label), the events it wants, cooldown and digest."""

    name: Name
    enabled: bool = True
    events: list[EventKind] = ["anomaly"]
    # At most one anomaly alert per source per cooldown; the ones held back are counted and summed up
    # in the next alert (or in a digest sent when the cooldown ends). 0 turns the cooldown off.
    cooldown_s: float = Field(default=60.0, ge=0)
    # When this many anomaly alerts of one source wait for this sink (a burst, or a sink that was down),
    # they go out as one digest message listing them all. 0 turns digests off.
    digest_after: int = Field(default=5, ge=0)
    timeout_s: float = Field(default=10.0, gt=0, le=600)

    @field_validator("events")
    @classmethod
    def _unique_events(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class WebhookSinkConfig(_SinkBase):
    """POST a JSON payload shaped for Slack, Mattermost, Microsoft Teams, or the generic JSON."""

    type: Literal["webhook"]
    url: str | None = Field(default=None, pattern=r"^https?://")
    format: Literal["json", "slack", "mattermost", "teams"] = "json"
    headers: dict[str, str] = {}  # fixed, non-secret headers
    headers_env: dict[str, EnvName] = {}  # header -> env var with the value
    url_env: EnvName | None = None  # a secret URL (Slack's) from the env
    username: str | None = None  # Slack/Mattermost display name
    channel: str | None = None  # Mattermost channel override
    verify_tls: bool = True

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSinkConfig:
        if bool(self.url) == bool(self.url_env):
            raise ValueError("a webhook sink needs exactly one of 'url' or 'url_env'")
        return self


class EmailSinkConfig(_SinkBase):
    """SMTP with plain, STARTTLS or TLS; the evidence PNG attached."""

    type: Literal["email"]
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)  # default: 25 plain, 587 starttls, 465 tls
    security: Literal["plain", "starttls", "tls"] = "starttls"
    username: str | None = None
    password_env: EnvName | None = None
    password_file: Path | None = None
    sender: str
    to: list[str] = Field(min_length=1)
    subject_prefix: str = "[anomaly-monitor]"
    attach_evidence: bool = True
    verify_tls: bool = True
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> EmailSinkConfig:
        if self.password_env and self.password_file:
            raise ValueError("set either 'password_env' or 'password_file', not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("a password needs a 'username'")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"plain": 25, "starttls": 587, "tls": 465}[self.security]


class AppriseSinkConfig(_SinkBase):
    """Apprise URLs (dozens of chat and push services); URLs with tokens belong in `urls_env`."""

    type: Literal["apprise"]
    urls: list[str] = []
    urls_env: list[EnvName] = []  # env vars, each holding one URL
    attach_evidence: bool = True

    @model_validator(mode="after")
    def _some_url(self) -> AppriseSinkConfig:
        if not self.urls and not self.urls_env:
            raise ValueError("an apprise sink needs 'urls' or 'urls_env'")
        return self


class AlertmanagerSinkConfig(_SinkBase):
    """POST to Alertmanager's /api/v2/alerts; alerts resolve by themselves after `resolve_after_s`."""

    type: Literal["alertmanager"]
    url: str = Field(pattern=r"^https?://")  # base URL, e.g. http://127.0.0.1:9093
    alertname: str = "InspectionAnomaly"
    severity: str = "warning"
    labels: dict[str, str] = {}  # extra labels, e.g. {line: "3", site: "plant-a"}
    resolve_after_s: float = Field(default=300.0, gt=0)
    headers_env: dict[str, EnvName] = {}
    generator_url: str | None = None
    verify_tls: bool = True
    cooldown_s: float = Field(default=0.0, ge=0)  # Alertmanager groups and throttles by itself
    digest_after: int = Field(default=0, ge=0)


class MqttSinkConfig(_SinkBase):
    """Publish events as JSON (QoS 1) with a retained availability topic and a last will."""

    type: Literal["mqtt"]
    host: str
    port: int = Field(default=1883, ge=1, le=65535)
    topic: str = "anomaly-monitor/{source}/{event}"  # {source} and {event} are filled in
    availability_topic: str = "anomaly-monitor/status"  # retained "online"; "offline" as last will
    client_id: str | None = None
    username: str | None = None
    password_env: EnvName | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    retain_events: bool = False

    @field_validator("topic")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        try:
            value.format(source="s", event="e")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"the topic may use only {{source}} and {{event}}: {exc}") from None
        if "+" in value or "#" in value:
            raise ValueError("a topic to publish to cannot contain the wildcards + or #")
        return value

    @model_validator(mode="after")
    def _one_password(self) -> MqttSinkConfig:
        if self.password_env and self.password_file:
            raise ValueError("set either 'password_env' or 'password_file', not both")
        return self


class CommandSinkConfig(_SinkBase):
    """Run a program with the alert as JSON on stdin (like Motion's on_event_start); non-zero exit fails."""

    type: Literal["command"]
    argv: list[str] = Field(min_length=1)


@dataclass(frozen=True)
class SinkType:
    """One kind of sink: its config class, and its implementation as "module:Class" (imported when built)."""

    config: type[_SinkBase]
    impl: str


# The one table of sink types; the config union, SINK_TYPES and build_sink() are derived from it.
# The implementations are named, not imported: apprise and paho take long to import, and check-config
# must not need them.
SINKS: dict[str, SinkType] = {
    "webhook": SinkType(WebhookSinkConfig, "monitor.alerts.webhook:WebhookSink"),
    "email": SinkType(EmailSinkConfig, "monitor.alerts.smtp:EmailSink"),
    "apprise": SinkType(AppriseSinkConfig, "monitor.alerts.apprise_sink:AppriseSink"),
    "alertmanager": SinkType(AlertmanagerSinkConfig, "monitor.alerts.alertmanager:AlertmanagerSink"),
    "mqtt": SinkType(MqttSinkConfig, "monitor.alerts.mqtt:MqttSink"),
    "command": SinkType(CommandSinkConfig, "monitor.alerts.command:CommandSink"),
}

SINK_TYPES: tuple[str, ...] = tuple(SINKS)

# Union[] takes a tuple built at run time; the `X | Y` spelling needs the members written out.
SinkConfig = Annotated[Union[tuple(t.config for t in SINKS.values())], Field(discriminator="type")]  # noqa: UP007


class AlertsConfig(StrictModel):
    """Where alerts go, and how hard the dispatcher tries to deliver them."""

    sinks: list[SinkConfig] = []
    # Failed deliveries are retried after initial, 2x, 4x ... up to max seconds, for at most max_age_s
    # after the alert was made; then the alert is counted as expired, logged and moved to outbox/expired.
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    max_age_s: float = Field(default=86_400.0, gt=0)
    expired_keep: int = Field(default=1000, ge=0)  # expired alert files kept per sink for inspection

    @model_validator(mode="after")
    def _unique_sink_names(self) -> AlertsConfig:
        names = [s.name for s in self.sinks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique, repeated: {', '.join(dupes)}")
        return self

    def resolve_paths(self, base: Path) -> None:
        """Make relative file paths (password_file, ca_file, a command's program) relative to `base`."""

        def resolve(path: Path | None) -> Path | None:
            if path is None:
                return None
            path = Path(os.path.expandvars(str(path))).expanduser()
            return path if path.is_absolute() else (base / path).resolve()

        for sink in self.sinks:
            for key in ("password_file", "ca_file"):
                if hasattr(sink, key):
                    setattr(sink, key, resolve(getattr(sink, key)))
            if isinstance(sink, CommandSinkConfig) and sink.argv[0].startswith(("./", "../")):
                sink.argv[0] = str((base / sink.argv[0]).resolve())

    @property
    def active_sinks(self) -> list[SinkConfig]:
        return [s for s in self.sinks if s.enabled]
