"""Class 7 of issue 11, the outbox half: a record that parses but has the wrong contents.

Before the fix such a file (a score that is a string, a verdict without a threshold, `created` of 1e300)
was queued, failed to render on every try, and held its sink's queue until it expired a day later. Now
every outbox file is validated by shape and value when it is loaded; a bad one is set aside in `corrupt/`
with a reason file, counted and logged, and the healthy alerts beside it are delivered.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import pytest
from alert_servers import WebhookServer, alerts_config, metric, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.alerts.dispatcher import AlertDispatcher
from monitor.alerts.events import Alert
from monitor.alerts.outbox import Outbox

SINK = "ob-fault"


def _webhook(name: str, url: str) -> dict:
    return {"type": "webhook", "name": name, "url": url, "cooldown_s": 0, "digest_after": 0}


def _healthy(seq: int, source: str = "line1") -> Alert:
    now = time.time()
    verdict = {"time": now, "frame_time": now, "source": source, "path": f"/data/{source}/img.png",
               "score": 0.5 + seq / 1000, "threshold": 0.1, "anomaly": True, "evidence": None}
    return Alert.new(seq, SINK, "anomaly", source, now, verdicts=(verdict,))


def _record(at: int, changes: dict | None = None) -> tuple[str, dict]:
    """(file name, record) of a healthy alert at sequence `at` with some fields changed (removed for ...)."""
    alert = _healthy(at)
    data = alert.to_json()
    for key, value in (changes or {}).items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return Outbox.filename(alert), data


def _verdict(seq: int, **changes: object) -> list[dict]:
    verdict = dict(_healthy(seq).verdicts[0])
    verdict.update(changes)
    return [verdict]


# (what is wrong, file name, bytes): each would have blocked the sink or stopped the start before.
def _bad_files() -> list[tuple[str, str, bytes]]:
    cases: list[tuple[str, str, bytes]] = [
        ("not json", "000000000010-a.json", b"{not json"),
        ("not utf-8", "000000000011-b.json", b'{"id": "\xff\xfe"}'),
        ("empty", "000000000012-c.json", b""),
        ("a json list", "000000000013-d.json", b"[1, 2, 3]"),
        ("a json string", "000000000014-e.json", b'"hello"'),
        ("nested too deeply", "000000000015-f.json", b"[" * 50_000 + b"]" * 50_000),
    ]
    fields = {
        "score is a string": {"verdicts": _verdict(16, score="0.5")},
        "verdict without a threshold": {"verdicts": [{k: v for k, v in _verdict(17)[0].items() if k != "threshold"}]},
        "created is 1e300": {"created": 1e300},
        "created is NaN": {"created": float("nan")},
        "seq is negative": {"seq": -3},
        "seq is a bool": {"seq": True},
        "unknown kind": {"kind": "explosion"},
        "verdicts is a dict": {"verdicts": {"score": 1}},
        "event is a list": {"kind": "camera_lost", "event": [1]},
        "suppressed lacks count": {"suppressed": {"first": 1.0, "last": 2.0, "max_score": 1.0}},
        "anomaly with nothing in it": {"verdicts": [], "suppressed": None},
        "id with a slash": {"id": "../../etc"},
        "no sink": {"sink": ...},
        "another sink": {"sink": "someone-else"},
        "evidence with a NUL": {"verdicts": _verdict(29, evidence="/tmp/a\x00b.png")},
    }
    for i, (what, change) in enumerate(fields.items()):
        seq = 16 + i
        name, data = _record(seq, change)
        if what == "id with a slash":
            name = f"{seq:012d}-x.json"
        cases.append((what, name, json.dumps(data).encode()))
    name, data = _record(40)
    cases.append(("file name does not match the record", "000000000041-other.json", json.dumps(data).encode()))
    return cases


def test_bad_records_are_set_aside_with_a_reason_and_healthy_ones_delivered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(tmp_path / "outbox")
    healthy = [_healthy(seq) for seq in (1, 30, 60)]
    for alert in healthy:
        outbox.write(alert)
    folder = outbox.folder(SINK)
    bad = _bad_files()
    for _, name, data in bad:
        (folder / name).write_bytes(data)
    os.mkfifo(folder / "000000000050-fifo.json")  # reading it would block the start for ever
    (folder / "000000000051-link.json").symlink_to(folder / healthy[0].id)  # a link leads anywhere
    with WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_webhook(SINK, server.url)]), outbox.root)
        with caplog.at_level(logging.ERROR, logger="monitor.alerts"):
            d.start()
        try:
            wait_until(lambda: len(server.received()) == 3, timeout=10)
        finally:
            d.stop()
    assert [p["id"] for p in server.received()] == [a.id for a in healthy]
    aside = folder / "corrupt"
    expected = {name for _, name, _ in bad} | {"000000000050-fifo.json", "000000000051-link.json"}
    assert {p.name for p in aside.iterdir() if not p.name.endswith(".reason.txt")} == expected
    for what, name, _ in bad:
        reason = (aside / f"{name}.reason.txt").read_text()
        assert reason.strip(), what
    assert "not a regular file" in (aside / "000000000050-fifo.json.reason.txt").read_text()
    string_score = next(name for what, name, _ in bad if what == "score is a string")
    assert "verdicts[0].score" in (aside / f"{string_score}.reason.txt").read_text()
    assert list(folder.glob("*.json")) == []
    assert metric("alert_outbox_corrupt_total", SINK) == len(expected)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert_outbox_corrupt")]
    assert len(logged) == len(expected)
    assert all("\n" not in line for line in logged)


def test_a_sink_folder_that_is_a_file_does_not_stop_the_start(tmp_path: Path) -> None:
    root = tmp_path / "outbox"
    root.mkdir()
    (root / SINK).write_text("not a folder")
    with WebhookServer() as server:
        d = AlertDispatcher(alerts_config([_webhook(SINK, server.url)]), root)
        d.start()
        d.stop()


# --- property: whatever sits in the outbox, the dispatcher starts and the healthy alerts go out ----------
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = ["id", "seq", "sink", "kind", "source", "created", "verdicts", "event", "suppressed", "host"]


@st.composite
def _bad_file(draw: st.DrawFn) -> tuple[str, object, object]:
    """Random bytes, a random JSON value, or a change to one field (or one verdict field) of a healthy record."""
    choice = draw(st.sampled_from(["bytes", "json", "field", "verdict"]))
    if choice == "bytes":
        return choice, None, draw(st.binary(max_size=200))
    if choice == "json":
        return choice, None, draw(_json)
    fields = _FIELDS if choice == "field" else ["time", "score", "threshold", "path", "evidence"]
    return choice, draw(st.sampled_from(fields)), draw(_json)


def _content(seq: int, choice: str, key: object, value: object) -> tuple[str, bytes, str | None]:
    """(file name, bytes, id of the record when it names this file) for one drawn file at `seq`."""
    if choice == "bytes":
        return f"{seq:012d}-rnd.json", value, None  # type: ignore[return-value]
    if choice == "json":
        return f"{seq:012d}-rnd.json", json.dumps(value).encode(), None
    name, data = _record(seq)
    if choice == "field":
        data[key] = value  # type: ignore[index]
    else:
        data["verdicts"][0][key] = value  # type: ignore[index]
    return name, json.dumps(data).encode(), data["id"] if isinstance(data["id"], str) else None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(_bad_file(), min_size=1, max_size=5))
def test_any_outbox_content_never_stops_the_start_nor_blocks_the_healthy_alerts(
        files: list[tuple[str, object, object]], webhook: WebhookServer) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp) / "outbox")
        folder = outbox.folder(SINK)
        folder.mkdir(parents=True)
        # Interleaved: healthy alerts at even sequence numbers, the drawn files between them.
        healthy = [_healthy(2 * i) for i in range(len(files) + 1)]
        for alert in healthy:
            outbox.write(alert)
        drawn = [_content(2 * i + 1, *f) for i, f in enumerate(files)]
        for name, data, _ in drawn:
            (folder / name).write_bytes(data)
        before = len(webhook.received())
        d = AlertDispatcher(alerts_config([_webhook(SINK, webhook.url)]), outbox.root)
        d.start()
        try:
            # Every file leaves the queue: delivered (a change that left a valid alert) or set aside.
            wait_until(lambda: not list(folder.glob("*.json")), timeout=10)
        finally:
            d.stop()
        got = [p["id"] for p in webhook.received()[before:]]
        aside = {p.name for p in (folder / "corrupt").glob("*.json")} if (folder / "corrupt").exists() else set()
        assert [i for i in got if i in {a.id for a in healthy}] == [a.id for a in healthy]
        for name, _, record_id in drawn:
            delivered = record_id is not None and record_id in got
            assert delivered != (name in aside), name
            if name in aside:
                assert (folder / "corrupt" / f"{name}.reason.txt").read_text().strip()
        assert len(got) == len(healthy) + sum(name not in aside for name, _, _ in drawn)


@pytest.fixture(scope="module")
def webhook() -> WebhookServer:
    with WebhookServer() as server:
        yield server
