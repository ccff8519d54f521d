"""Command sink: run a program with the alert's JSON on stdin (like Motion's on_event_start)."""

from __future__ import annotations

import os
import subprocess

from monitor.alerts.base import Sink
from monitor.alerts.config import CommandSinkConfig
from monitor.alerts.events import Alert, PermanentSinkError, SinkError

# sysexits.h EX_DATAERR: the program says this alert is wrong and will never be taken; any other
# non-zero status may be passing (a network down, a lock held), so it is retried with backoff.
EX_DATAERR = 65


class CommandSink(Sink):
    """Exit status 0 is success; a non-zero status, a missing program or the timeout is a failure.

    Exit status 65 (EX_DATAERR) is a permanent rejection: the alert is parked in `rejected/`, not retried.
    """

    config: CommandSinkConfig

    def send(self, alert: Alert) -> None:
        c = self.config
        env = dict(os.environ, ANOMALY_MONITOR_EVENT=alert.kind, ANOMALY_MONITOR_SOURCE=alert.source,
                   ANOMALY_MONITOR_ALERT_ID=alert.id)
        evidence = alert.evidence
        if evidence is not None:
            env["ANOMALY_MONITOR_EVIDENCE"] = str(evidence)
        if alert.url:
            env["ANOMALY_MONITOR_URL"] = alert.url
        try:
            # run() kills the program when the timeout passes, so a hung hook cannot hold the sink.
            proc = subprocess.run(c.argv, input=alert.payload_bytes(), capture_output=True, env=env,
                                  timeout=c.timeout_s, check=False, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise SinkError(f"{c.argv[0]} did not finish within {c.timeout_s} s (killed)") from None
        except OSError as exc:
            raise SinkError(f"cannot run {c.argv[0]}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip()[-300:]
            error = PermanentSinkError if proc.returncode == EX_DATAERR else SinkError
            raise error(f"{c.argv[0]} exited with status {proc.returncode}: {tail!r}")
