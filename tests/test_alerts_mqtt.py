"""MQTT sink against a real mosquitto broker on loopback, checked by a real paho subscriber."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alert_servers import Mosquitto, MqttSubscriber, alerts_config, anomaly, wait_until

from monitor.alerts.dispatcher import AlertDispatcher

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path):
    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


def _mqtt_sink(name: str, port: int, **kw: object) -> dict:
    return {"type": "mqtt", "name": name, "host": "127.0.0.1", "port": port, "cooldown_s": 0,
            "digest_after": 0, "timeout_s": 5, "topic": "factory/{source}/{event}",
            "availability_topic": f"factory/{name}/status", **kw}


def test_a_subscriber_receives_the_anomaly_event(tmp_path: Path, broker: Mosquitto) -> None:
    with MqttSubscriber(broker.port, ["factory/#"]) as sub:
        d = AlertDispatcher(alerts_config([_mqtt_sink("mq", broker.port)]), tmp_path / "outbox")
        d.start()
        d.notify_verdict(anomaly("line1", 4))
        assert wait_until(lambda: sub.on("factory/line1/anomaly"), timeout=10)
        d.stop()
    payload, retained = sub.on("factory/line1/anomaly")[0]
    event = json.loads(payload)
    assert event["kind"] == "anomaly" and event["anomalies"][0]["score"] == 0.504
    assert not retained


def test_availability_is_retained_online_while_running_and_offline_after_stop(tmp_path: Path,
                                                                              broker: Mosquitto) -> None:
    d = AlertDispatcher(alerts_config([_mqtt_sink("mq-avail", broker.port)]), tmp_path / "outbox")
    d.start()
    d.notify_verdict(anomaly("line1", 0))  # delivered means connected, so "online" was published before it
    assert wait_until(lambda: not list((tmp_path / "outbox" / "mq-avail").glob("*.json")), timeout=10)
    with MqttSubscriber(broker.port, ["factory/mq-avail/status"]) as late:  # subscribes after the fact
        assert wait_until(lambda: late.on("factory/mq-avail/status"), timeout=5)
        assert late.on("factory/mq-avail/status")[0] == (b"online", True)
    d.stop()
    with MqttSubscriber(broker.port, ["factory/mq-avail/status"]) as after:
        assert wait_until(lambda: after.on("factory/mq-avail/status"), timeout=5)
        assert after.on("factory/mq-avail/status")[0] == (b"offline", True)


_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from monitor.alerts.config import AlertsConfig
    from monitor.alerts.dispatcher import AlertDispatcher
    config = AlertsConfig.model_validate_json(sys.argv[1])
    d = AlertDispatcher(config, Path(sys.argv[2]))
    d.start()
    sink = d._workers[0].sink
    while not sink._connected.is_set():
        time.sleep(0.02)
    print("connected", flush=True)
    time.sleep(60)
""")


def test_the_broker_publishes_the_last_will_when_the_process_dies(tmp_path: Path, broker: Mosquitto,
                                                                   subprocess_env: dict) -> None:
    config = alerts_config([_mqtt_sink("mq-will", broker.port)])
    argv = [sys.executable, "-c", _SCRIPT, config.model_dump_json(), str(tmp_path / "outbox")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=subprocess_env, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"connected"
        with MqttSubscriber(broker.port, ["factory/mq-will/status"]) as sub:
            assert wait_until(lambda: sub.on("factory/mq-will/status"), timeout=5)
            assert sub.on("factory/mq-will/status")[0][0] == b"online"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            assert wait_until(lambda: len(sub.on("factory/mq-will/status")) == 2, timeout=10)
            assert sub.on("factory/mq-will/status")[1] == (b"offline", False)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_test_alert_leaves_the_running_daemons_availability_alone(tmp_path: Path, broker: Mosquitto) -> None:
    from monitor.alerts.dispatcher import send_test_alert

    config = alerts_config([_mqtt_sink("mq-test", broker.port)])
    d = AlertDispatcher(config, tmp_path / "outbox")
    d.start()
    with MqttSubscriber(broker.port, ["factory/#"]) as sub:
        # retained if it came before we subscribed, live otherwise
        assert wait_until(lambda: [p for p, _ in sub.on("factory/mq-test/status")] == [b"online"], timeout=10)
        assert send_test_alert(config) == [("mq-test", True, "mqtt delivered")]
        assert wait_until(lambda: sub.on("factory/test/test"), timeout=5)
        d.stop()
        assert wait_until(lambda: len(sub.on("factory/mq-test/status")) == 2, timeout=5)
    assert [p for p, _ in sub.on("factory/mq-test/status")] == [b"online", b"offline"]
