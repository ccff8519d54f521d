"""Alert records, the on-disk outbox, the cooldown policy, the dispatcher and its workers, one module per sink."""

from monitor.alerts.config import AlertsConfig
from monitor.alerts.dispatcher import AlertDispatcher, send_test_alert

__all__ = ["AlertDispatcher", "AlertsConfig", "send_test_alert"]
