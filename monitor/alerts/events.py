"""The alert record kept in the outbox, and the human texts every sink formats from it."""

from __future__ import annotations

import datetime as dt
import json
import socket
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monitor.records import Region, local_time

# `kind` of an alert: the event kinds of the config, plus "test" (monitor test-alert).
TEST_KIND = "test"


class SinkError(Exception):
    """A delivery attempt failed; the message says why (retried by the dispatcher)."""

    # False: the sink may take the same alert later (down, busy, timeout); it is retried with backoff.
    permanent = False


class PermanentSinkError(SinkError):
    """The sink refused this alert for good (HTTP 400, SMTP 550): retrying the same alert cannot succeed.

    The worker parks it in the sink's `rejected/` folder at once and moves on, so one alert the sink will
    never take does not hold every alert behind it for `max_age_s`.
    """

    permanent = True


# HTTP answers in 4xx that say "not now" rather than "never": Request Timeout and Too Many Requests.
RETRYABLE_4XX = frozenset({408, 429})


def http_error(status: int, detail: str) -> SinkError:
    """The SinkError for an HTTP answer that is not a success: permanent for a 4xx other than 408 and 429.

    A 4xx says the request itself is wrong (bad payload, revoked webhook, too large), so the same alert
    would be refused again; 5xx, 408 and 429 say the server may take it later.
    """
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        return PermanentSinkError(detail)
    return SinkError(detail)


def iso(ts: float) -> str:
    """RFC 3339 UTC time with milliseconds, as Alertmanager and most chat tools expect."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Alert:
    """One alert for one sink: an anomaly (possibly a digest of several), a source event, or a test.

    `verdicts` holds the journal lines (Verdict.to_json()) of the anomalies it reports: one for a plain
    anomaly alert, several for a digest. `suppressed` summarises anomalies held back by the cooldown
    since the previous alert of the same source: {"count", "first", "last", "max_score"}.
    `external_url` is the config's `http.external_url` when the alert was made (no trailing slash): where
    people reach the daemon's review page, so each anomaly links to `<external_url>/verdicts/<verdict id>`.
    """

    id: str
    seq: int
    sink: str
    kind: str
    source: str
    created: float
    verdicts: tuple[dict, ...] = ()
    event: dict | None = None
    suppressed: dict | None = None
    host: str = field(default_factory=socket.gethostname)
    external_url: str | None = None

    @staticmethod
    def new(seq: int, sink: str, kind: str, source: str, created: float, **kw: Any) -> Alert:
        """A fresh alert with a random id."""
        return Alert(id=uuid.uuid4().hex, seq=seq, sink=sink, kind=kind, source=source, created=created, **kw)

    # --- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict:
        data = asdict(self)
        data["verdicts"] = list(self.verdicts)
        return data

    @staticmethod
    def from_json(data: dict) -> Alert:
        """Parse an outbox file's content; raises ValueError when it is not an alert."""
        try:
            return Alert(
                id=str(data["id"]), seq=int(data["seq"]), sink=str(data["sink"]), kind=str(data["kind"]),
                source=str(data["source"]), created=float(data["created"]),
                verdicts=tuple(data.get("verdicts") or ()), event=data.get("event"),
                suppressed=data.get("suppressed"), host=str(data.get("host", "")),
                external_url=data.get("external_url") or None,  # absent in outbox files of older versions
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an alert record: {exc!r}") from None

    def merged(self, others: list[Alert]) -> Alert:
        """This alert and later anomaly alerts of the same source as one digest (ids of all kept)."""
        verdicts = list(self.verdicts)
        count = (self.suppressed or {}).get("count", 0)
        for other in others:
            verdicts.extend(other.verdicts)
            count += (other.suppressed or {}).get("count", 0)
        suppressed = dict(self.suppressed or {}, count=count) if count else None
        return Alert(id=self.id, seq=self.seq, sink=self.sink, kind=self.kind, source=self.source,
                     created=self.created, verdicts=tuple(verdicts), event=self.event, suppressed=suppressed,
                     host=self.host, external_url=self.external_url)

    # --- what the sinks show ---------------------------------------------------------------
    @property
    def is_digest(self) -> bool:
        return self.kind == "anomaly" and len(self.verdicts) != 1

    @property
    def latest(self) -> dict | None:
        """The most recent anomaly's verdict, or None for events."""
        return self.verdicts[-1] if self.verdicts else None

    @property
    def max_score(self) -> float | None:
        scores = [v["score"] for v in self.verdicts]
        if self.suppressed and self.suppressed.get("max_score") is not None:
            scores.append(self.suppressed["max_score"])
        return max(scores) if scores else None

    @property
    def evidence(self) -> Path | None:
        """The evidence image of the most recent anomaly that has one."""
        for verdict in reversed(self.verdicts):
            if verdict.get("evidence"):
                return Path(verdict["evidence"])
        return None

    def link(self, verdict: dict) -> str | None:
        """The review page's detail view of one of this alert's verdicts, or None without `external_url`."""
        if not self.external_url or not verdict.get("id"):
            return None
        return f"{self.external_url.rstrip('/')}/verdicts/{verdict['id']}"

    @property
    def url(self) -> str | None:
        """The detail link of the most recent anomaly, or None (events, tests, no `external_url`)."""
        latest = self.latest
        return self.link(latest) if latest is not None else None

    @property
    def severity(self) -> str:
        return {"anomaly": "warning", "camera_lost": "warning"}.get(self.kind, "info")

    def title(self) -> str:
        """One line: what happened where."""
        if self.kind == TEST_KIND:
            return f"Test alert from anomaly-monitor on {self.host}"
        if self.kind == "anomaly":
            if not self.verdicts:  # what a cooldown held back, sent when it ended
                n = (self.suppressed or {}).get("count", 0)
                return f"{n} more anomalies on {self.source} during the cooldown (max score {self.max_score:.6g})"
            if self.is_digest:
                n = len(self.verdicts)
                return f"{n} anomalies on {self.source} (max score {self.max_score:.6g})"
            v = self.verdicts[0]
            return f"Anomaly on {self.source}: score {v['score']:.6g} > threshold {v['threshold']:.6g}"
        words = {"camera_lost": "Camera lost", "camera_found": "Camera back",
                 "daemon_start": "Monitor started", "daemon_stop": "Monitor stopped"}
        return f"{words.get(self.kind, self.kind)}: {self.source}"

    def lines(self) -> list[str]:
        """The short text body, one fact per line."""
        out = [f"time: {local_time(self.created)}", f"source: {self.source}", f"host: {self.host}"]
        if self.kind == "anomaly":
            shown = self.verdicts[-20:]
            for v in shown:
                what = v.get("path") or "camera frame"
                # The part's own time (file arrival, camera capture): the one to find it by on the line.
                when = local_time(v.get("frame_time") or v["time"])
                out.append(f"- {when} score {v['score']:.6g} threshold {v['threshold']:.6g} {what}")
                region = Region.from_json(v.get("region"))
                if region is not None:
                    out.append(f"  at {region.describe()}")
                if v.get("evidence"):
                    out.append(f"  evidence: {v['evidence']}")
                link = self.link(v)
                if link:
                    out.append(f"  review: {link}")
            if len(self.verdicts) > len(shown):
                out.append(f"(and {len(self.verdicts) - len(shown)} earlier ones, see the journal)")
        elif self.event:
            out.append(f"event: {self.event.get('event', self.kind)}")
            if self.event.get("detail"):
                out.append(f"detail: {self.event['detail']}")
        if self.suppressed:
            s = self.suppressed
            out.append(
                f"suppressed by cooldown: {s['count']} more anomalies between {local_time(s['first'])} and "
                f"{local_time(s['last'])}, max score {s['max_score']:.6g} (all in the journal)"
            )
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def payload(self) -> dict:
        """The generic JSON payload (webhook format `json`, MQTT, command stdin); see README."""
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "time": self.created,
            "time_iso": iso(self.created),
            "time_local": local_time(self.created),
            "host": self.host,
            "severity": self.severity,
            "title": self.title(),
            "text": self.text(),
            "url": self.url,
            "anomalies": list(self.verdicts),
            "event": self.event,
            "suppressed": self.suppressed,
        }

    def payload_bytes(self) -> bytes:
        return json.dumps(self.payload(), sort_keys=True).encode()
