"""Command sink: a real program gets the alert as JSON on stdin; failures and timeouts are retried."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from alert_servers import alerts_config, anomaly, metric, wait_until

from monitor.alerts.dispatcher import AlertDispatcher
from monitor.records import SourceEvent

# Appends stdin and two environment variables as one JSON line to the file named in argv[1].
_HOOK = ("import json, os, sys; data = json.load(sys.stdin); "
         "open(sys.argv[1], 'a').write(json.dumps({'stdin': data, "
         "'event': os.environ['ANOMALY_MONITOR_EVENT'], "
         "'source': os.environ['ANOMALY_MONITOR_SOURCE']}) + '\\n')")


def _command(name: str, argv: list[str], **kw: object) -> dict:
    return {"type": "command", "name": name, "argv": argv, "cooldown_s": 0, "digest_after": 0,
            "events": ["anomaly", "camera_lost"], **kw}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_the_program_gets_the_event_json_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "hook.jsonl"
    sink = _command("cmd", [sys.executable, "-c", _HOOK, str(out)])
    d = AlertDispatcher(alerts_config([sink]), tmp_path / "o")
    d.start()
    d.notify_verdict(anomaly("line1", 2))
    d.notify_event(SourceEvent("cam1", "camera_lost", time.time(), "no frames"))
    assert wait_until(lambda: len(_lines(out)) == 2, timeout=10)
    d.stop()
    first, second = _lines(out)
    assert (first["event"], first["source"]) == ("anomaly", "line1")
    assert first["stdin"]["anomalies"][0]["score"] == 0.502
    assert (second["event"], second["stdin"]["event"]["detail"]) == ("camera_lost", "no frames")


def test_a_failing_program_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "hook.jsonl"
    flag = tmp_path / "attempts"
    # Fails twice (counting attempts in a file), then records stdin.
    script = (f"import pathlib, sys; f = pathlib.Path({str(flag)!r}); n = int(f.read_text() or 0) "
              f"if f.exists() else 0; f.write_text(str(n + 1)); sys.exit(3) if n < 2 else None; " + _HOOK)
    d = AlertDispatcher(alerts_config([_command("cmd-retry", [sys.executable, "-c", script, str(out)])]),
                        tmp_path / "o")
    d.start()
    d.notify_verdict(anomaly("line1", 1))
    assert wait_until(lambda: len(_lines(out)) == 1, timeout=10)
    d.stop()
    assert flag.read_text() == "3"
    assert metric("alerts_failed_total", "cmd-retry") == 2


def test_a_program_that_hangs_is_killed_at_the_timeout_and_the_alert_kept(tmp_path: Path) -> None:
    sink = _command("cmd-hang", [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=0.5)
    d = AlertDispatcher(alerts_config([sink]), tmp_path / "o")
    d.start()
    d.notify_verdict(anomaly("line1", 1))
    assert wait_until(lambda: metric("alerts_failed_total", "cmd-hang") >= 1, timeout=10)
    d.stop(timeout=2)
    assert len(list((tmp_path / "o" / "cmd-hang").glob("*.json"))) == 1


def test_a_missing_program_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    d = AlertDispatcher(alerts_config([_command("cmd-missing", [str(tmp_path / "no-such-program")])]),
                        tmp_path / "o")
    d.start()
    d.notify_verdict(anomaly("line1", 1))
    assert wait_until(lambda: metric("alerts_failed_total", "cmd-missing") >= 2, timeout=10)
    d.stop()
