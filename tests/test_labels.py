"""Labels as journal lines and the journal index the review page reads: validation, latest label wins, rotation,
incremental reading, bounded memory, a 100,000-line journal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from monitor import labels, metrics
from monitor.http.journal_index import JournalIndex, Query
from monitor.journal import Journal, read_journal_tail
from monitor.records import Verdict


def verdict(source: str = "line1", score: float = 0.5, anomaly: bool = True, at: float | None = None,
            evidence: str | None = "/ev/x.png") -> dict:
    at = time.time() if at is None else at
    return Verdict(source=source, frame_time=at - 0.1, scored_at=at, score=score, threshold=0.3, anomaly=anomaly,
                   path=Path("/in/x.png"), evidence=Path(evidence) if anomaly and evidence else None,
                   model="default", model_id="abc").to_json()


def write(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# --- the label line ------------------------------------------------------------------------------

def test_a_label_line_has_exactly_the_shape_replay_reads():
    vid = "a" * 32
    record = labels.label_record(vid, "false_alarm", "dust on the lens", "local", at=12.5)
    assert record == {"time": 12.5, "label": "false_alarm", "verdict": vid, "note": "dust on the lens",
                      "by": "local"}
    assert labels.is_label_line(record)


@pytest.mark.parametrize(("label", "anomaly"), [("defect", True), ("false_alarm", True), ("missed_defect", False)])
def test_labels_that_fit_their_verdict_are_accepted(label, anomaly):
    assert labels.check_label(label, anomaly) == label


@pytest.mark.parametrize(("label", "anomaly"), [("missed_defect", True), ("defect", False), ("false_alarm", False),
                                                ("Defect", True), ("", True), (None, False), (["defect"], True)])
def test_labels_that_do_not_fit_their_verdict_are_refused(label, anomaly):
    with pytest.raises(labels.LabelRefused):
        labels.check_label(label, anomaly)


def test_a_note_must_be_a_short_string():
    assert labels.clean_note("  scratch  ") == "scratch"
    assert labels.clean_note(None) == ""
    with pytest.raises(labels.LabelRefused):
        labels.clean_note(42)
    with pytest.raises(labels.LabelRefused):
        labels.clean_note("x" * (labels.MAX_NOTE_CHARS + 1))


def test_the_journal_tail_reader_at_start_accepts_label_lines(tmp_path):
    path = tmp_path / "journal.jsonl"
    v = verdict()
    write(path, [v, labels.label_record(v["id"], "defect", "", "local")])
    before = metrics.REGISTRY.get_sample_value("anomaly_monitor_state_records_rejected_total",
                                               {"file": "journal"}) or 0.0
    records = read_journal_tail(path)
    after = metrics.REGISTRY.get_sample_value("anomaly_monitor_state_records_rejected_total",
                                              {"file": "journal"}) or 0.0
    assert [r.get("label") for r in records] == [None, "defect"]
    assert after == before


# --- the index -----------------------------------------------------------------------------------

def test_the_latest_label_of_a_verdict_wins_and_precision_counts_it_once(tmp_path):
    path = tmp_path / "journal.jsonl"
    a, b = verdict(score=0.9), verdict(score=0.8)
    write(path, [a, b, labels.label_record(a["id"], "false_alarm"), labels.label_record(b["id"], "defect"),
                 labels.label_record(a["id"], "defect", "looked again")])
    index = JournalIndex(path)
    index.refresh()
    _, label = index.verdict(a["id"])
    assert (label.label, label.note, label.count) == ("defect", "looked again", 2)
    assert index.precision() == {"line1": 1.0}
    write(path, [labels.label_record(b["id"], "false_alarm")])
    index.refresh()
    assert index.precision() == {"line1": 0.5}


def test_labels_survive_a_restart_of_the_index(tmp_path):
    path = tmp_path / "journal.jsonl"
    a = verdict()
    write(path, [a, labels.label_record(a["id"], "false_alarm", "glare")])
    first = JournalIndex(path)
    first.refresh()
    again = JournalIndex(path)
    again.refresh()
    assert again.verdict(a["id"])[1].as_dict() == first.verdict(a["id"])[1].as_dict()
    assert again.verdict(a["id"])[1].label == "false_alarm"


def test_a_refresh_reads_only_new_whole_lines(tmp_path):
    path = tmp_path / "journal.jsonl"
    write(path, [verdict() for _ in range(3)])
    index = JournalIndex(path)
    assert index.refresh() == 3
    assert index.refresh() == 0
    late = json.dumps(verdict())
    with open(path, "a") as f:
        f.write(late[:20])  # a line still being written
    assert index.refresh() == 0
    with open(path, "a") as f:
        f.write(late[20:] + "\n")
    assert index.refresh() == 1
    assert index.anomalies(Query(limit=10)).total == 4


def test_rotation_loses_and_repeats_no_verdict(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, max_bytes=2000, backups=50)
    index = JournalIndex(path)
    ids = []
    for i in range(60):
        record = verdict(score=float(i))
        ids.append(record["id"])
        journal.append(record)
        if i % 7 == 0:
            index.refresh()  # between rotations, and across them
    journal.close()
    index.refresh()
    assert len(list(tmp_path.glob("journal.jsonl.*"))) > 3
    page = index.anomalies(Query(limit=1000))
    assert [e.id for e in page.entries] == ids[::-1]
    assert JournalIndex(path).refresh() == 60  # a fresh index reads the rotated files oldest first, once


def test_memory_is_bounded_oldest_anomalies_forgotten_labelled_normals_kept(tmp_path):
    path = tmp_path / "journal.jsonl"
    normal = verdict(anomaly=False, score=0.1)
    records = [normal, labels.label_record(normal["id"], "missed_defect")]
    records += [verdict(score=float(i)) for i in range(20)]
    records += [verdict(anomaly=False) for _ in range(20)]
    write(path, records)
    index = JournalIndex(path, max_anomalies=5, max_normals=3)
    index.refresh()
    page = index.anomalies(Query(limit=100))
    assert [e.score for e in page.entries] == [19.0, 18.0, 17.0, 16.0, 15.0]
    assert index.verdict(normal["id"]) is not None  # labelled: kept beyond the window of recent normals
    missed = index.anomalies(Query(label="missed_defect"))
    assert [e.id for e in missed.entries] == [normal["id"]]


def test_filters_by_source_time_label_and_score_and_pages_by_cursor(tmp_path):
    path = tmp_path / "journal.jsonl"
    t0 = 1_800_000_000.0
    records = [verdict(source=f"line{i % 2}", score=i / 100, at=t0 + i) for i in range(40)]
    write(path, records + [labels.label_record(records[10]["id"], "false_alarm"),
                           labels.label_record(records[12]["id"], "defect")])
    index = JournalIndex(path)
    index.refresh()

    def ids(**kw) -> list[str]:
        return [e.id for e in index.anomalies(Query(limit=100, **kw)).entries]

    assert ids(source="line1") == [r["id"] for r in records[::-1] if r["source"] == "line1"]
    assert ids(since=t0 + 30, until=t0 + 32) == [records[i]["id"] for i in (32, 31, 30)]
    assert ids(min_score=0.2, max_score=0.21) == [records[21]["id"], records[20]["id"]]
    assert ids(label="false_alarm") == [records[10]["id"]]
    assert ids(label="defect") == [records[12]["id"]]
    assert len(ids(label="none")) == 38
    first = index.anomalies(Query(limit=15))
    second = index.anomalies(Query(limit=15, before=first.entries[-1].id))
    third = index.anomalies(Query(limit=15, before=second.entries[-1].id))
    assert first.more and second.more and not third.more
    seen = [e.id for e in first.entries + second.entries + third.entries]
    assert seen == [r["id"] for r in records[::-1]]
    assert [e.id for e in index.anomalies(Query(limit=15, offset=15)).entries] == [e.id for e in second.entries]


def test_a_page_of_a_100k_line_journal(tmp_path):
    path = tmp_path / "journal.jsonl"
    t0 = 1_800_000_000.0
    lines = []
    labelled = []
    for i in range(100_000):
        record = verdict(source=f"line{i % 4}", score=(i % 1000) / 1000, anomaly=i % 10 != 0, at=t0 + i)
        lines.append(json.dumps(record, separators=(",", ":")))
        if i % 997 == 0 and record["anomaly"]:
            labelled.append(record["id"])
            lines.append(json.dumps(labels.label_record(record["id"], "false_alarm")))
    path.write_text("\n".join(lines) + "\n")
    index = JournalIndex(path)
    started = time.perf_counter()
    index.refresh()
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    page = index.anomalies(Query(source="line3", min_score=0.5, limit=50))
    queried = time.perf_counter() - started
    started = time.perf_counter()
    labelled_page = index.anomalies(Query(label="false_alarm", limit=50))
    by_label = time.perf_counter() - started
    print(f"100k-line journal: load {loaded:.2f} s, filtered page {queried * 1000:.1f} ms, "
          f"label page {by_label * 1000:.1f} ms")
    assert len(page.entries) == 50 and page.more
    assert all(e.source == "line3" and e.score >= 0.5 and e.anomaly for e in page.entries)
    assert page.entries[0].time > page.entries[-1].time
    assert [e.id for e in labelled_page.entries] == labelled[::-1][:50]
    assert index.refresh() == 0  # nothing new: nothing read again
