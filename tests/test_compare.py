"""`monitor compare` on a hand-made journal: pairing shadow verdicts with their primaries, agreement, alert
volume, disagreements, labelled precision and recall; and the readers that must not see shadow lines (the
review's journal index, `monitor replay` and so the what-if panel) giving the same figures with or without."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.compare import compare, format_table, read_journal
from monitor.config import ThresholdConfig
from monitor.http.journal_index import JournalIndex, Query
from monitor.replay import read_records, replay

REPO = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0


def vid(n: int, shadow: bool = False) -> str:
    return f"{'b' if shadow else 'a'}{n:031x}"


def primary(n: int, t: float, anomaly: bool, source: str = "line1", score: float | None = None) -> dict:
    return {"id": vid(n), "time": t, "frame_time": t - 0.1, "source": source, "path": f"/in/{n}.png",
            "score": score if score is not None else (0.9 if anomaly else 0.1), "threshold": 0.5,
            "anomaly": anomaly, "evidence": None, "model": "default", "model_id": "aaaaaaaaaaaa",
            "file": {"name": f"{n}.png", "size": 100, "mtime_ns": n}}


def shadow(n: int, t: float, anomaly: bool, source: str = "line1") -> dict:
    return {"id": vid(n, shadow=True), "time": t + 0.01, "frame_time": t - 0.1, "source": source,
            "path": f"/in/{n}.png", "score": 0.8 if anomaly else 0.2, "threshold": 0.4, "anomaly": anomaly,
            "evidence": None, "model": "candidate", "model_id": "cccccccccccc", "shadow": True,
            "shadow_of": vid(n)}


def label(n: int, name: str, t: float) -> dict:
    return {"time": t, "label": name, "verdict": vid(n), "note": "", "by": "local"}


# (primary flags, shadow flags, labels in order) per frame of line1, one every 10 minutes: a span of 1 h.
FRAMES = [
    (True, True, ["defect"]),                   # 1 agree, both right
    (True, False, ["false_alarm"]),             # 2 primary only, a false alarm
    (False, True, ["missed_defect"]),           # 3 shadow only, a defect the primary missed
    (False, False, []),                         # 4 agree, unlabelled
    (False, True, []),                          # 5 shadow only, unlabelled
    (True, True, ["defect", "false_alarm"]),    # 6 agree; the latest label wins: a false alarm
    (False, False, ["missed_defect"]),          # 7 agree, both missed a defect
]


def write_journal(folder: Path, with_shadows: bool = True) -> Path:
    """The hand-made journal: line1's seven frames (the first three in the rotated file), one frame of line2, an
    event, a shadow line whose primary is gone, a bad line, and labels (one on a shadow id, which counts for
    nothing)."""
    lines: list[dict | str] = [{"time": T0 - 5, "source": "daemon", "event": "daemon_start", "detail": ""}]
    for n, (p, s, labels) in enumerate(FRAMES, 1):
        t = T0 + (n - 1) * 600
        lines.append(primary(n, t, p))
        if with_shadows:
            lines.append(shadow(n, t, s))
        lines.extend(label(n, name, t + 30 + i) for i, name in enumerate(labels))
    lines.append(primary(8, T0 + 100, True, source="line2"))
    if with_shadows:
        lines.append(shadow(8, T0 + 100, True, source="line2"))
        gone = shadow(99, T0 + 200, True)
        lines.append(gone)
        lines.append({"time": T0 + 300, "label": "defect", "verdict": vid(8, shadow=True), "note": "", "by": "x"})
    lines.append('{"cut by a crash": ')
    folder.mkdir(parents=True, exist_ok=True)
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    cut = next(i for i, line in enumerate(lines) if isinstance(line, dict) and line.get("id") == vid(4))
    (folder / "journal.jsonl.1").write_text("\n".join(text[:cut]) + "\n")
    (folder / "journal.jsonl").write_text("\n".join(text[cut:]) + "\n")
    return folder / "journal.jsonl"


EXPECTED_LINE1 = {
    "source": "line1", "model": "default", "shadow_model": "candidate", "frames": 7, "agree": 4,
    "agreement": pytest.approx(4 / 7), "primary_only": 1, "shadow_only": 2, "labelled": 5, "defects": 3,
    "first": T0, "last": T0 + 3600, "span_hours": 1.0,
    "primary": {"model": "default", "model_ids": ["aaaaaaaaaaaa"], "alerts": 3, "alerts_per_hour": 3.0,
                "labelled_flagged": 3, "tp": 1, "fp": 2, "precision": pytest.approx(1 / 3),
                "recall": pytest.approx(1 / 3)},
    "shadow": {"model": "candidate", "model_ids": ["cccccccccccc"], "alerts": 4, "alerts_per_hour": 4.0,
               "labelled_flagged": 3, "tp": 2, "fp": 1, "precision": pytest.approx(2 / 3),
               "recall": pytest.approx(2 / 3)},
}


def test_compare_gives_the_hand_computed_figures(tmp_path):
    journal = read_journal(write_journal(tmp_path))
    assert journal.counts() == {"files": 2, "verdicts": 8, "shadows": 9, "labels": 6, "bad_lines": 1}
    result = compare(journal).to_json()
    assert result["unpaired"] == 1
    line1, line2 = result["pairings"]
    assert line1 == EXPECTED_LINE1
    # One frame: no span, so no rate per hour; nothing labelled, so no precision or recall.
    assert line2["source"] == "line2" and line2["frames"] == 1 and line2["agree"] == 1
    assert line2["span_hours"] == 0 and line2["primary"]["alerts_per_hour"] is None
    assert line2["shadow"]["precision"] is None and line2["shadow"]["recall"] is None


def test_compare_counts_only_the_source_and_time_range_asked_for(tmp_path):
    journal = read_journal(write_journal(tmp_path))
    (only,) = compare(journal, source="line1", since=T0 + 3 * 600, until=T0 + 3600).pairings
    # Frames 4, 5 and 6: 4 and 6 agree, 5 is the shadow's alone; frame 6 is a labelled false alarm of both.
    assert (only.frames, only.agree, only.primary_only, only.shadow_only) == (3, 2, 0, 1)
    assert (only.primary.alerts, only.shadow.alerts, only.primary.precision, only.shadow.precision) == (1, 2, 0, 0)
    assert compare(journal, source="nope").pairings == []


def test_the_table_shows_a_primary_and_a_shadow_row_per_pairing(tmp_path):
    journal = read_journal(write_journal(tmp_path))
    text = format_table(journal, compare(journal))
    rows = {tuple(line.split()[:3]): line.split() for line in text.splitlines()
            if line.startswith(("line1", "line2"))}
    assert rows[("line1", "default", "primary")][3:] == ["7", "4", "0.571", "3", "3.00", "1", "3", "1", "2",
                                                          "0.333", "0.333"]
    assert rows[("line1", "candidate", "shadow")][3:] == ["7", "4", "0.571", "4", "4.00", "2", "3", "2", "1",
                                                           "0.667", "0.667"]
    assert "1 shadow verdict(s) without their primary" in text and "(+1 rotated)" in text


def test_the_command_line_answers_the_same_figures_as_json(tmp_path):
    path = write_journal(tmp_path)
    res = subprocess.run([sys.executable, "-m", "monitor", "compare", "--journal", str(path), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert answer["pairings"][0] == EXPECTED_LINE1
    assert answer["pairings"] == compare(read_journal(path)).to_json()["pairings"]
    table = subprocess.run([sys.executable, "-m", "monitor", "compare", "--journal", str(path), "--source", "line2"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert table.returncode == 0 and "line2" in table.stdout and "line1  default" not in table.stdout
    bad = subprocess.run([sys.executable, "-m", "monitor", "compare", "--journal", str(path), "--since", "never"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "--since" in bad.stderr


# --- readers that must not see shadow lines ----------------------------------------------------------------
def test_replay_gives_the_same_figures_with_or_without_shadow_lines(tmp_path):
    plain = read_records(write_journal(tmp_path / "plain", with_shadows=False))
    shadowed = read_records(write_journal(tmp_path / "shadowed"))
    assert shadowed.shadows == 9 and plain.shadows == 0
    assert [r.id for r in shadowed.verdicts] == [r.id for r in plain.verdicts]
    for settings in (ThresholdConfig(fixed=0.5), ThresholdConfig(quantile=0.9, window=10)):
        assert replay(shadowed, settings).to_json() == replay(plain, settings).to_json()


def test_the_review_index_lists_counts_and_labels_primary_verdicts_only(tmp_path):
    plain = JournalIndex(write_journal(tmp_path / "plain", with_shadows=False))
    shadowed = JournalIndex(write_journal(tmp_path / "shadowed"))
    plain.refresh()
    shadowed.refresh()
    for query in (Query(), Query(source="line1"), Query(label="missed_defect"), Query(label="none")):
        a, b = plain.anomalies(query), shadowed.anomalies(query)
        assert [e.id for e in a.entries] == [e.id for e in b.entries] and a.total == b.total
    now = T0 + 3700
    assert shadowed.counts(now) == plain.counts(now)
    assert shadowed.precision() == plain.precision() == {"line1": pytest.approx(1 / 3)}
    assert shadowed.sources() == plain.sources()
    assert shadowed.verdict(vid(3, shadow=True)) is None
    assert shadowed.shadow_of(vid(3, shadow=True)) == vid(3) and shadowed.shadow_of(vid(3)) is None
