"""MQTT sink: events as JSON with QoS 1, a retained availability topic and a last will (paho-mqtt 2)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading

import paho.mqtt.client as mqtt

from monitor.alerts.base import Sink, password
from monitor.alerts.config import MqttSinkConfig
from monitor.alerts.events import Alert, SinkError

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"


class MqttSink(Sink):
    """Keeps one connection (paho's network thread reconnects); publishes wait for the broker's PUBACK."""

    config: MqttSinkConfig

    def __init__(self, config: MqttSinkConfig) -> None:
        super().__init__(config)
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()

    def _make_client(self) -> mqtt.Client:
        c = self.config
        client_id = c.client_id or f"anomaly-monitor-{socket.gethostname()}-{os.getpid()}-{c.name}"
        if not self.announce:
            client_id += "-test"  # never take over the running daemon's session
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        client.enable_logger(log)
        if c.username:
            client.username_pw_set(c.username, password(c.password_env, c.password_file))
        if c.tls:
            client.tls_set(ca_certs=str(c.ca_file) if c.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        if self.announce:
            # The broker publishes this if the daemon vanishes without saying goodbye (SIGKILL, power loss).
            client.will_set(c.availability_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.warning("mqtt_connect_refused sink=%s reason=%s", self.name, reason_code)
            return
        if self.announce:
            client.publish(self.config.availability_topic, ONLINE, qos=1, retain=True)
        self._connected.set()
        log.info("mqtt_connected sink=%s host=%s port=%d", self.name, self.config.host, self.config.port)

    def _on_disconnect(self, client: mqtt.Client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if self._connected.is_set():
            log.warning("mqtt_disconnected sink=%s reason=%s", self.name, reason_code)
        self._connected.clear()

    def open(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            client = self._make_client()
            client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
            client.loop_start()
            self._client = client

    def topic(self, alert: Alert) -> str:
        return self.config.topic.format(source=alert.source, event=alert.kind)

    def send(self, alert: Alert) -> None:
        self.open()
        client = self._client
        assert client is not None
        if not self._connected.wait(self.config.timeout_s):
            raise SinkError(f"not connected to {self.config.host}:{self.config.port}")
        info = client.publish(self.topic(alert), alert.payload_bytes(), qos=1,
                              retain=self.config.retain_events)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SinkError(f"publish failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(self.config.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise SinkError(f"publish failed: {exc}") from None
        if not info.is_published():
            raise SinkError(f"no PUBACK within {self.config.timeout_s} s")

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        if self._connected.is_set() and self.announce:
            # A clean goodbye: the broker does not send the will, so say "offline" ourselves.
            info = client.publish(self.config.availability_topic, OFFLINE, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(min(2.0, self.config.timeout_s))
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
