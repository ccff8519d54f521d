"""How fast the scoring thread can hand anomalies to the alert dispatcher, and how fast they go out.

Prints: notify_verdict calls per second (each one an fsynced outbox file per sink) with a healthy, a
dead (connection refused) and a hung (never answers) webhook sink; and end-to-end deliveries per second
to a local webhook server. Run: .venv/bin/python benchmarks/alerts_dispatch.py [--n 500]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from alert_servers import WebhookServer, alerts_config, anomaly, free_port, wait_until  # noqa: E402

from monitor.alerts.dispatcher import AlertDispatcher  # noqa: E402


def _sink(name: str, url: str, **kw: object) -> dict:
    return {"type": "webhook", "name": name, "url": url, "cooldown_s": 0, "digest_after": 0, **kw}


def notify_rate(sinks: list[dict], n: int) -> tuple[float, float]:
    """(calls per second, worst single call in ms) of notify_verdict with these sinks running."""
    with tempfile.TemporaryDirectory() as tmp:
        d = AlertDispatcher(alerts_config(sinks, backoff_initial_s=0.05, backoff_max_s=1), Path(tmp))
        d.start()
        worst = 0.0
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            d.notify_verdict(anomaly(("line1", "line2")[i % 2], i))
            worst = max(worst, time.perf_counter() - t)
        rate = n / (time.perf_counter() - t0)
        d.stop(timeout=1)
    return rate, worst * 1000


def delivery_rate(n: int) -> float:
    """Alerts per second from notify_verdict to a 200 answer of a local webhook server."""
    with tempfile.TemporaryDirectory() as tmp, WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_sink("bench-deliver", server.url)]), Path(tmp))
        d.start()
        t0 = time.perf_counter()
        for i in range(n):
            d.notify_verdict(anomaly("line1", i))
        wait_until(lambda: len(server.requests) >= n, timeout=300)
        rate = n / (time.perf_counter() - t0)
        d.stop()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="anomalies per measurement")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the dead sinks log every failed attempt
    dead = f"http://127.0.0.1:{free_port()}/"
    with WebhookServer() as ok, WebhookServer(delay_s=60) as hung:
        cases = {
            "1 healthy webhook": [_sink("bench-ok", ok.url)],
            "1 dead webhook (refused)": [_sink("bench-dead", dead)],
            "1 hung webhook (no answer)": [_sink("bench-hung", hung.url, timeout_s=60)],
            "healthy + dead + hung": [_sink("bench-ok3", ok.url), _sink("bench-dead3", dead),
                                      _sink("bench-hung3", hung.url, timeout_s=60)],
        }
        for label, sinks in cases.items():
            rate, worst = notify_rate(sinks, args.n)
            print(f"notify_verdict  {label:28s} {rate:9.0f} calls/s  worst call {worst:6.2f} ms")
    print(f"delivered to a local webhook (1 sink)           {delivery_rate(args.n):9.0f} alerts/s")


if __name__ == "__main__":
    main()
