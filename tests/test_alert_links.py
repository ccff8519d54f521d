"""Alerts a person on the line can act on: a link to the verdict's detail view on the review page, local
time with its UTC offset, and where on the part the region is."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alert_servers import WebhookServer, alerts_config, wait_until
from daemon_proc import DaemonProcess, free_port
from imagegen import anomalous_image, write_images

from monitor.alerts.dispatcher import AlertDispatcher
from monitor.alerts.events import Alert
from monitor.alerts.outbox import Outbox
from monitor.config import ConfigError, load_config
from monitor.records import Region, Verdict

EXTERNAL = "http://line1-pc:9108"
# POSIX TZ: the zone called TEST is 5 h 30 min east of UTC; needs no tz database.
TZ = "TEST-05:30"
OFFSET = dt.timezone(dt.timedelta(hours=5, minutes=30))
FRAME_TIME = 1_790_000_000.25  # 2026-09-21 16:23:20 UTC


@pytest.fixture
def line_tz() -> Iterator[None]:
    """The process's local time zone set to TZ for the test, restored after it."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = TZ
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def _in_line_tz(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, OFFSET).strftime("%Y-%m-%d %H:%M:%S") + " +05:30"


def _verdict(**kw: object) -> Verdict:
    fields = {"source": "line1", "frame_time": FRAME_TIME, "scored_at": FRAME_TIME + 0.05, "score": 0.5,
              "threshold": 0.1, "anomaly": True, "path": Path("/data/line1/part7.png"),
              "region": Region(100, 30, 20, 6), **kw}
    return Verdict(**fields)  # type: ignore[arg-type]


def _webhook(name: str, url: str, **kw: object) -> dict:
    return {"type": "webhook", "name": name, "url": url, "cooldown_s": 0, "digest_after": 0, **kw}


def _deliver(tmp_path: Path, verdict: Verdict, external_url: str | None, **sink: object) -> dict:
    """What a real HTTP receiver gets for one anomaly through the dispatcher."""
    with WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_webhook("wh", server.url, **sink)]), tmp_path / "outbox")
        d.start()
        try:
            d.notify_verdict(verdict, external_url)
            assert wait_until(lambda: len(server.received()) == 1)
        finally:
            d.stop()
    return server.received()[0]


def test_a_webhook_alert_links_to_the_verdict_and_says_when_and_where_in_local_time(tmp_path, line_tz):
    verdict = _verdict()
    payload = _deliver(tmp_path, verdict, EXTERNAL)
    link = f"{EXTERNAL}/verdicts/{verdict.id}"
    assert payload["url"] == link
    text = payload["text"].splitlines()
    assert f"  review: {link}" in text
    # The part's time, as the clock on the line's wall shows it, with the offset.
    assert any(line.startswith(f"- {_in_line_tz(FRAME_TIME)} score 0.5 ") for line in text)
    assert "  at x=100 y=30 (20 x 6 px)" in text
    assert payload["time_local"].endswith(" +05:30")
    assert payload["anomalies"][0]["region"] == {"x": 100, "y": 30, "w": 20, "h": 6}


def test_without_external_url_an_alert_has_no_link(tmp_path):
    payload = _deliver(tmp_path, _verdict(), None)
    assert payload["url"] is None
    assert "review:" not in payload["text"] and "/verdicts/" not in payload["text"]


@pytest.mark.parametrize(
    ("fmt", "links"),
    [
        ("slack", lambda p: [b["text"]["text"] for b in p["blocks"] if b["type"] == "section"]),
        ("mattermost", lambda p: [p["text"]]),
        ("teams", lambda p: [a["url"] for a in p["attachments"][0]["content"].get("actions", [])]),
    ],
)
def test_chat_formats_carry_a_clickable_link(tmp_path, fmt, links):  # noqa: ANN001
    verdict = _verdict()
    link = f"{EXTERNAL}/verdicts/{verdict.id}"
    with_link = links(_deliver(tmp_path / "with", verdict, EXTERNAL, format=fmt))
    without = links(_deliver(tmp_path / "without", verdict, None, format=fmt))
    # Outside the code block (where chat services do not make URLs clickable): a link of its own.
    assert any(f"<{link}|" in t or f"]({link})" in t or t == link for t in with_link)
    assert not any("/verdicts/" in t for t in without)


def test_an_alertmanager_alert_carries_the_link_as_annotation_and_generator_url():
    from monitor.alerts.alertmanager import AlertmanagerSink
    from monitor.alerts.config import AlertmanagerSinkConfig

    verdict = _verdict()
    alert = Alert.new(1, "am", "anomaly", "line1", time.time(), verdicts=(verdict.to_json(),),
                      external_url=EXTERNAL)
    sink = AlertmanagerSink(AlertmanagerSinkConfig(type="alertmanager", name="am", url="http://127.0.0.1:9093"))
    (body,) = sink.alerts(alert)
    assert body["annotations"]["review_url"] == f"{EXTERNAL}/verdicts/{verdict.id}"
    assert body["generatorURL"] == f"{EXTERNAL}/verdicts/{verdict.id}"
    configured = AlertmanagerSink(AlertmanagerSinkConfig(type="alertmanager", name="am", url="http://127.0.0.1:9093",
                                                         generator_url="http://grafana.local/d/line1"))
    assert configured.alerts(alert)[0]["generatorURL"] == "http://grafana.local/d/line1"


def test_a_digest_links_every_anomaly_it_lists():
    verdicts = [_verdict(score=0.5 + i / 10) for i in range(3)]
    alerts = [Alert.new(i, "wh", "anomaly", "line1", time.time(), verdicts=(v.to_json(),), external_url=EXTERNAL)
              for i, v in enumerate(verdicts)]
    digest = alerts[0].merged(alerts[1:])
    for v in verdicts:
        assert f"  review: {EXTERNAL}/verdicts/{v.id}" in digest.lines()
    assert digest.url == f"{EXTERNAL}/verdicts/{verdicts[-1].id}"


def test_an_alert_left_in_the_outbox_keeps_its_link_after_a_restart(tmp_path):
    verdict = _verdict()
    outbox = Outbox(tmp_path / "outbox")
    outbox.write(Alert.new(7, "wh", "anomaly", "line1", time.time(), verdicts=(verdict.to_json(),),
                           external_url=EXTERNAL))
    (loaded,) = Outbox(tmp_path / "outbox").load("wh")
    assert loaded.url == f"{EXTERNAL}/verdicts/{verdict.id}"


@pytest.mark.parametrize("url", ["line1-pc:9108", "ftp://line1-pc/", "http://", "http://line1-pc:99999/",
                                 "http://line1-pc:9108/?x=1"])
def test_a_bad_external_url_is_a_config_error_naming_the_key(tmp_path, url):
    path = tmp_path / "config.yaml"
    path.write_text(f"sources: [{{name: line1, folder: inbox}}]\nhttp:\n  external_url: '{url}'\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: http\.external_url: "):
        load_config(path)


def test_external_url_is_optional_and_a_trailing_slash_is_dropped(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("sources: [{name: line1, folder: inbox}]\n")
    assert load_config(path).http.external_url is None
    path.write_text("sources: [{name: line1, folder: inbox}]\nhttp: {external_url: 'https://qa.example.com/line1/'}\n")
    assert load_config(path).http.external_url == "https://qa.example.com/line1"


@pytest.mark.slow
def test_the_daemon_alerts_with_the_link_the_region_and_local_time(tmp_path, tiny_bundle, subprocess_env):
    """A real daemon in TZ, a real webhook receiver: the alert of a flagged file links to its journal line."""
    rng = np.random.default_rng(3)
    (bad,) = write_images(tmp_path / "samples", [anomalous_image(rng)], prefix="bad")
    with WebhookServer() as server:
        config = {
            "model": str(tiny_bundle),
            "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 50, "stable_s": 0.5}],
            "metrics": {"host": "127.0.0.1", "port": free_port()},
            "http": {"external_url": f"{EXTERNAL}/"},
            "alerts": {"sinks": [_webhook("chat", server.url)]},
        }
        daemon = DaemonProcess(tmp_path / "daemon", config, dict(subprocess_env, TZ=TZ))
        daemon.start()
        try:
            shutil.copy(bad, daemon.workdir / "inbox" / bad.name)
            (verdict,) = daemon.wait_for_verdicts(1, timeout=30)
            assert wait_until(lambda: len(server.received()) == 1, timeout=20)
        finally:
            daemon.kill()
    assert verdict["anomaly"] is True
    region = verdict["region"]
    assert set(region) == {"x", "y", "w", "h"} and 0 < region["w"] <= 32 and 0 < region["h"] <= 32
    payload = server.received()[0]
    assert payload["url"] == f"{EXTERNAL}/verdicts/{verdict['id']}"
    text = payload["text"]
    assert f"at x={region['x']} y={region['y']} ({region['w']} x {region['h']} px)" in text
    assert f"- {_in_line_tz(verdict['frame_time'])} score " in text
