"""The dispatcher's promises: outbox first, never blocking, per-sink isolation, cooldown, digest, expiry."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from alert_servers import WebhookServer, alerts_config, anomaly, free_port, metric, wait_until

from monitor import metrics
from monitor.alerts.dispatcher import AlertDispatcher
from monitor.records import SourceEvent, Verdict


def _webhook(name: str, url: str, **kw: object) -> dict:
    return {"type": "webhook", "name": name, "url": url, "cooldown_s": 0, "digest_after": 0, **kw}


def _outbox_files(outbox: Path, sink: str) -> list[Path]:
    return sorted((outbox / sink).glob("*.json"))


def test_alert_is_on_disk_when_notify_returns(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    d = AlertDispatcher(alerts_config([_webhook("d-disk", dead)]), tmp_path / "outbox")
    verdict = anomaly("line1", 3)
    d.notify_verdict(verdict)  # not started: nothing can have been delivered
    files = _outbox_files(tmp_path / "outbox", "d-disk")
    assert len(files) == 1
    assert json.loads(files[0].read_text())["verdicts"] == [verdict.to_json()]
    assert metrics.REGISTRY.get_sample_value("anomaly_monitor_alert_outbox_size") == 1


def test_normal_verdicts_make_no_alert(tmp_path: Path) -> None:
    d = AlertDispatcher(alerts_config([_webhook("d-normal", "http://127.0.0.1:9")]), tmp_path / "outbox")
    d.notify_verdict(Verdict("line1", 0.0, 0.0, 0.01, 0.1, anomaly=False))
    assert _outbox_files(tmp_path / "outbox", "d-normal") == []


def test_notify_does_not_wait_for_a_hung_sink(tmp_path: Path) -> None:
    with WebhookServer(delay_s=30) as hung:  # accepts the connection, never answers in time
        d = AlertDispatcher(alerts_config([_webhook("d-hung", hung.url, timeout_s=30)]), tmp_path / "outbox")
        d.start()
        done = threading.Event()

        def produce() -> None:
            for i in range(50):
                d.notify_verdict(anomaly("line1", i))
            done.set()

        threading.Thread(target=produce, name="test-producer", daemon=True).start()
        assert done.wait(10), "notify_verdict waited for the sink"
        assert len(_outbox_files(tmp_path / "outbox", "d-hung")) == 50
        assert hung.requests == []
        d.stop(timeout=0.5)


def test_a_dead_sink_does_not_delay_another_sink(tmp_path: Path) -> None:
    with WebhookServer(delay_s=30) as hung, WebhookServer() as good:
        config = alerts_config([_webhook("d-slow", hung.url, timeout_s=30), _webhook("d-good", good.url)])
        d = AlertDispatcher(config, tmp_path / "outbox")
        d.start()
        for i in range(5):
            d.notify_verdict(anomaly("line1", i))
        assert wait_until(lambda: len(good.received()) == 5, timeout=5)
        assert hung.requests == []
        d.stop(timeout=0.5)
        assert len(_outbox_files(tmp_path / "outbox", "d-slow")) == 5


def test_undelivered_alerts_are_sent_after_a_restart(tmp_path: Path) -> None:
    port = free_port()
    config = alerts_config([_webhook("d-restart", f"http://127.0.0.1:{port}")])
    first = AlertDispatcher(config, tmp_path / "outbox")
    first.start()
    for i in range(3):
        first.notify_verdict(anomaly("line1", i))
    first.stop(timeout=1)
    assert len(_outbox_files(tmp_path / "outbox", "d-restart")) == 3
    with WebhookServer(port=port) as server:
        second = AlertDispatcher(config, tmp_path / "outbox")
        second.start()
        second.notify_verdict(anomaly("line1", 3))
        assert wait_until(lambda: len(server.received()) == 4)
        second.stop()
    assert [p["anomalies"][0]["score"] for p in server.received()] == [0.5, 0.501, 0.502, 0.503]
    assert _outbox_files(tmp_path / "outbox", "d-restart") == []


def test_a_half_written_outbox_file_is_ignored_and_a_corrupt_one_set_aside(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    (outbox / "d-corrupt").mkdir(parents=True)
    (outbox / "d-corrupt" / ".000000000001-x.json.tmp").write_text('{"id": ')
    (outbox / "d-corrupt" / "000000000002-y.json").write_text("not json")
    with WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_webhook("d-corrupt", server.url)]), outbox)
        d.start()
        d.notify_verdict(anomaly())
        assert wait_until(lambda: len(server.received()) == 1)
        d.stop()
    assert not (outbox / "d-corrupt" / ".000000000001-x.json.tmp").exists()
    assert (outbox / "d-corrupt" / "corrupt" / "000000000002-y.json").read_text() == "not json"


def test_cooldown_suppresses_and_the_next_alert_says_how_many(tmp_path: Path) -> None:
    with WebhookServer() as server:
        sink = _webhook("d-cool", server.url, cooldown_s=0.5)
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "outbox")
        d.start()
        for i in range(6):
            d.notify_verdict(anomaly("line1", i))
        assert wait_until(lambda: len(server.received()) == 2, timeout=5)  # the first, then the summary
        d.stop()
    first, summary = server.received()
    assert first["anomalies"][0]["score"] == 0.5 and first["suppressed"] is None
    assert summary["suppressed"]["count"] == 5
    assert summary["suppressed"]["max_score"] == pytest.approx(0.505)
    assert "suppressed by cooldown: 5 more" in summary["text"]
    assert summary["title"] == "5 more anomalies on line1 during the cooldown (max score 0.505)"
    assert metric("alerts_suppressed_total", "d-cool") == 5


def test_what_a_cooldown_held_back_goes_out_when_it_ends_even_if_nothing_follows(tmp_path: Path) -> None:
    with WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_webhook("d-cool-idle", server.url, cooldown_s=0.3)]), tmp_path / "o")
        d.start()
        d.notify_verdict(anomaly("line1", 0))
        assert wait_until(lambda: len(server.received()) == 1)
        time.sleep(0.05)  # the worker is idle now, waiting for work
        d.notify_verdict(anomaly("line1", 1))
        d.notify_verdict(anomaly("line1", 2))
        assert wait_until(lambda: len(server.received()) == 2, timeout=5)
        d.stop()
    assert server.received()[1]["suppressed"]["count"] == 2


def test_cooldown_is_per_source(tmp_path: Path) -> None:
    with WebhookServer() as server:
        sink = _webhook("d-cool-src", server.url, cooldown_s=60)
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "o")
        d.start()
        d.notify_verdict(anomaly("line1", 0))
        d.notify_verdict(anomaly("line2", 0))
        d.notify_verdict(anomaly("line1", 1))
        assert wait_until(lambda: len(server.received()) == 2)
        d.stop(timeout=0.2)
    assert sorted(p["source"] for p in server.received()[:2]) == ["line1", "line2"]


def test_a_burst_waiting_for_a_sink_goes_out_as_one_digest(tmp_path: Path) -> None:
    port = free_port()
    sink = _webhook("d-digest", f"http://127.0.0.1:{port}", digest_after=5, events=["anomaly", "camera_lost"])
    config = alerts_config([sink])
    d = AlertDispatcher(config, tmp_path / "outbox")  # never started: the sink was down all along
    for i in range(12):
        d.notify_verdict(anomaly("line1", i))
    d.notify_event(SourceEvent("line1", "camera_lost", time.time(), "no frames for 30 s"))
    d.notify_verdict(anomaly("line1", 12))
    with WebhookServer(port=port) as server:
        d = AlertDispatcher(config, tmp_path / "outbox")
        d.start()
        assert wait_until(lambda: len(server.received()) == 3)
        d.stop()
    digest, lost, last = server.received()
    assert [v["score"] for v in digest["anomalies"]] == [0.5 + i / 1000 for i in range(12)]
    assert digest["title"].startswith("12 anomalies on line1")
    assert lost["kind"] == "camera_lost"
    assert [v["score"] for v in last["anomalies"]] == [0.512]
    assert metric("alerts_sent_total", "d-digest") == 3


def test_each_sink_gets_only_the_event_types_it_selected(tmp_path: Path) -> None:
    with WebhookServer() as anomalies, WebhookServer() as cameras:
        config = alerts_config([
            _webhook("d-ev-anomaly", anomalies.url),
            _webhook("d-ev-camera", cameras.url, events=["camera_lost", "camera_found"]),
        ])
        d = AlertDispatcher(config, tmp_path / "outbox")
        d.start()
        d.notify_event(SourceEvent("cam1", "camera_lost", time.time(), "timeout"))
        d.notify_verdict(anomaly("cam1", 0))
        d.notify_event(SourceEvent("cam1", "camera_found", time.time()))
        d.notify_event(SourceEvent("daemon", "daemon_start", time.time()))
        assert wait_until(lambda: len(cameras.received()) == 2 and len(anomalies.received()) == 1)
        d.stop()
    assert [p["kind"] for p in cameras.received()] == ["camera_lost", "camera_found"]
    assert cameras.received()[0]["event"]["detail"] == "timeout"
    assert [p["kind"] for p in anomalies.received()] == ["anomaly"]


def test_alerts_past_their_maximum_age_are_counted_logged_and_kept_aside(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    d = AlertDispatcher(alerts_config([_webhook("d-expire", dead)], max_age_s=0.3), tmp_path / "outbox")
    d.start()
    with caplog.at_level(logging.ERROR, logger="monitor.alerts"):
        d.notify_verdict(anomaly("line1", 0))
        d.notify_verdict(anomaly("line1", 1))
        assert wait_until(lambda: metric("alerts_expired_total", "d-expire") == 2, timeout=5)
    d.stop()
    assert _outbox_files(tmp_path / "outbox", "d-expire") == []
    assert len(list((tmp_path / "outbox" / "d-expire" / "expired").glob("*.json"))) == 2
    assert sum("alert_expired sink=d-expire" in r.getMessage() for r in caplog.records) == 2


def test_stop_delivers_what_a_healthy_sink_can_take(tmp_path: Path) -> None:
    with WebhookServer() as server:
        sink = _webhook("d-drain", server.url, events=["daemon_stop"])
        d = AlertDispatcher(alerts_config([sink]), tmp_path / "o")
        d.start()
        d.notify_event(SourceEvent("daemon", "daemon_stop", time.time(), "SIGTERM"))
        d.stop()
        assert [p["kind"] for p in server.received()] == ["daemon_stop"]


def test_delivery_latency_is_observed_per_sink(tmp_path: Path) -> None:
    with WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_webhook("d-latency", server.url)]), tmp_path / "o")
        d.start()
        d.notify_verdict(anomaly())
        assert wait_until(lambda: len(server.received()) == 1)
        d.stop()
    assert metric("alert_delivery_seconds_count", "d-latency") == 1


def test_alerts_queued_before_start_are_sent_once(tmp_path: Path) -> None:
    with WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_webhook("d-early", server.url)]), tmp_path / "o")
        d.notify_verdict(anomaly("line1", 0))  # on disk and pending; start() finds the same file
        d.start()
        assert wait_until(lambda: len(server.received()) == 1)
        d.stop()
        assert len(server.received()) == 1
    assert metrics.REGISTRY.get_sample_value("anomaly_monitor_alert_outbox_size") == 0


def test_a_prepared_alert_is_on_disk_but_not_sent_until_released(tmp_path: Path) -> None:
    with WebhookServer() as hook:
        d = AlertDispatcher(alerts_config([_webhook("d-prepared", hook.url)]), tmp_path / "outbox")
        d.start()
        prepared = d.prepare_verdict(anomaly("line1", 1))
        assert len(_outbox_files(tmp_path / "outbox", "d-prepared")) == 1
        time.sleep(0.5)
        assert hook.requests == []  # the daemon has not synced the verdict's journal line yet
        d.release(prepared)
        assert wait_until(lambda: len(hook.requests) == 1, 10)
        d.stop(timeout=2)


def test_a_prepared_alert_never_released_is_sent_after_the_next_start(tmp_path: Path) -> None:
    with WebhookServer() as hook:
        first = AlertDispatcher(alerts_config([_webhook("d-crash", hook.url)]), tmp_path / "outbox")
        first.start()
        first.prepare_verdict(anomaly("line1", 2))  # the daemon dies before the journal sync
        first.stop(timeout=1)
        assert hook.requests == []
        again = AlertDispatcher(alerts_config([_webhook("d-crash", hook.url)]), tmp_path / "outbox")
        again.start()
        assert wait_until(lambda: len(hook.requests) == 1, 10)
        again.stop(timeout=2)
