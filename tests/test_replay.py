"""`monitor replay`: the what-if threshold over the journal, compared with the journal's own verdicts and the
operators' labels; applying a setting to the config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from imagegen import anomalous_image, normal_image, write_images

from monitor.cli import main
from monitor.config import ThresholdConfig, load_config
from monitor.replay import (
    Calibration,
    ReplayError,
    ThresholdChange,
    apply_threshold,
    calibrations_for,
    journal_files,
    read_calibration,
    read_records,
    replay,
    threshold_changed_event,
)

# --- a synthetic journal ------------------------------------------------------------------------------


def verdict(vid: str, score: float, anomaly: bool, source: str = "a", t: float = 0.0, **extra) -> dict:
    return {"id": vid, "time": t, "frame_time": t, "source": source, "path": None, "score": score,
            "threshold": 0.26, "anomaly": anomaly, "evidence": None, "model": "default", "model_id": "abc",
            **extra}


def label(vid: str, name: str, t: float = 0.0) -> dict:
    return {"time": t, "label": name, "verdict": vid, "note": "", "by": "test"}


def write_journal(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# id, score, recorded anomaly, label. Recorded flags are those of some earlier threshold (0.26).
ROWS = [
    ("v1", 0.10, False, None),
    ("v2", 0.50, True, "defect"),
    ("v3", 0.30, False, "missed_defect"),
    ("v4", 0.70, True, "false_alarm"),
    ("v5", 0.20, False, None),
    ("v6", 0.90, True, "defect"),
    ("v7", 0.25, False, "missed_defect"),
    ("v8", 0.27, True, "false_alarm"),
]


def labelled_journal(path: Path) -> Path:
    records = [verdict(vid, score, anomaly, t=i) for i, (vid, score, anomaly, _) in enumerate(ROWS)]
    records.append({"time": 9.0, "source": "a", "event": "daemon_stop", "detail": ""})
    records += [label(vid, name, t=10 + i) for i, (vid, _, _, name) in enumerate(ROWS) if name]
    return write_journal(path, records)


def test_a_fixed_what_if_gives_the_alerts_and_confusion_matrix_computed_by_hand(tmp_path):
    records = read_records(labelled_journal(tmp_path / "journal.jsonl"))
    result = replay(records, ThresholdConfig(fixed=0.28))

    # Above 0.28: v2 v3 v4 v6. Labelled: v2 v3 v6 defects alerted (TP), v4 a false alarm alerted (FP),
    # v7 a defect passed (FN), v8 a false alarm passed (TN).
    w = result.sources["a"].what_if
    assert (w.verdicts, w.alerts, w.tp, w.fp, w.fn, w.tn) == (8, 4, 3, 1, 1, 1)
    assert w.alert_rate == 0.5 and w.precision == 0.75 and w.recall == 0.75
    assert (result.to_anomaly, result.to_normal) == (1, 1)  # v3 becomes an anomaly, v8 normal
    assert {(c.id, c.anomaly) for c in result.changed} == {("v3", True), ("v8", False)}


def test_the_recorded_row_counts_the_journals_anomaly_flags(tmp_path):
    records = read_records(labelled_journal(tmp_path / "journal.jsonl"))
    result = replay(records, ThresholdConfig(fixed=0.28))

    r = result.recorded
    assert r.alerts == sum(anomaly for _, _, anomaly, _ in ROWS) == 4
    # v2 v6 defects flagged, v4 v8 false alarms flagged, v3 v7 defects missed.
    assert (r.tp, r.fp, r.fn, r.tn) == (2, 2, 2, 0)
    assert r.precision == 0.5 and r.recall == 0.5


def test_precision_and_recall_are_none_without_labels(tmp_path):
    journal = write_journal(tmp_path / "journal.jsonl", [verdict("x1", 0.9, True), verdict("x2", 0.1, False)])
    counts = replay(read_records(journal), ThresholdConfig(fixed=0.5)).what_if
    assert counts.alerts == 1 and counts.labelled == 0
    assert counts.precision is None and counts.recall is None


def test_a_rolling_what_if_moves_with_the_window_like_a_hand_computation(tmp_path):
    # Window of ten 1.0s; median x 1.5 = 1.5. Six normal 1.4s enter: after the sixth the median is 1.4 and
    # the threshold 2.1, so 1.9 is normal; 2.5 is an anomaly (and stays out of the window).
    scores = [1.4] * 6 + [1.9, 2.5]
    records = [verdict(f"r{i}", s, s > 1.5, t=i) for i, s in enumerate(scores)]
    records += [label("r6", "false_alarm"), label("r7", "defect")]
    journal = write_journal(tmp_path / "journal.jsonl", records)
    cal = {"a": Calibration(scores=(1.0,) * 10, quantile=0.9, margin=9.0, bundle="b")}

    result = replay(read_records(journal), ThresholdConfig(quantile=0.5, margin=1.5, window=10), cal)

    item = result.sources["a"]
    assert [c.id for c in result.changed] == ["r6"] and result.changed[0].threshold == pytest.approx(2.1)
    assert (item.what_if.alerts, item.what_if.tp, item.what_if.tn) == (1, 1, 1)
    assert (item.recorded.alerts, item.recorded.tp, item.recorded.fp) == (2, 1, 1)
    assert item.last_threshold == pytest.approx(2.1)
    assert item.start == "bundle b"


def test_the_bundles_quantile_and_margin_apply_where_the_setting_leaves_them_unset(tmp_path):
    journal = write_journal(tmp_path / "journal.jsonl", [verdict("x", 1.9, True)])
    cal = {"a": Calibration(scores=(1.0,) * 10, quantile=0.5, margin=2.0, bundle="b")}
    item = replay(read_records(journal), ThresholdConfig(), cal).sources["a"]
    assert (item.quantile, item.margin) == (0.5, 2.0)
    assert item.what_if.alerts == 0  # 1.9 < 2 x 1.0


def test_without_a_bundle_the_window_starts_from_the_journals_first_scores(tmp_path):
    # Ten normal scores of 1.0 start the window; they are counted in neither row.
    scores = [1.0] * 10 + [1.2, 3.0]
    journal = write_journal(tmp_path / "journal.jsonl",
                            [verdict(f"j{i}", s, s > 2, t=i) for i, s in enumerate(scores)])
    item = replay(read_records(journal), ThresholdConfig(quantile=0.5, margin=1.5, window=10)).sources["a"]
    assert item.warmup == 10 and item.start == "journal: first 10 verdicts"
    assert item.what_if.verdicts == item.recorded.verdicts == 2
    assert item.what_if.alerts == 1  # 3.0 > 1.5; 1.2 is not
    assert any("no bundle" in note for note in item.notes)


def test_the_latest_label_of_a_verdict_wins(tmp_path):
    journal = write_journal(tmp_path / "journal.jsonl", [
        verdict("v", 0.9, True), label("v", "defect", t=1), label("v", "false_alarm", t=2)])
    records = read_records(journal)
    assert records.labels == {"v": "false_alarm"}
    counts = replay(records, ThresholdConfig(fixed=0.5)).what_if
    assert (counts.tp, counts.fp) == (0, 1)


def test_rotated_journals_are_read_oldest_first(tmp_path):
    journal = tmp_path / "journal.jsonl"
    write_journal(tmp_path / "journal.jsonl.2", [verdict("first", 0.1, False, t=1)])
    write_journal(tmp_path / "journal.jsonl.1", [verdict("second", 0.2, False, t=2), label("first", "defect")])
    write_journal(journal, [verdict("third", 0.3, False, t=3), label("first", "missed_defect")])
    write_journal(tmp_path / "other.jsonl.1", [verdict("stranger", 0.4, False)])

    assert journal_files(journal) == [tmp_path / "journal.jsonl.2", tmp_path / "journal.jsonl.1", journal]
    records = read_records(journal)
    assert [v.id for v in records.verdicts] == ["first", "second", "third"]
    assert records.labels == {"first": "missed_defect"}  # the newer file's label is the latest


def test_rotated_files_alone_are_still_a_journal(tmp_path):
    write_journal(tmp_path / "journal.jsonl.1", [verdict("old", 0.1, False)])
    assert [v.id for v in read_records(tmp_path / "journal.jsonl").verdicts] == ["old"]


def test_a_missing_journal_is_an_error(tmp_path):
    with pytest.raises(ReplayError, match="no journal"):
        read_records(tmp_path / "journal.jsonl")


def test_bad_lines_are_skipped_and_counted_by_reason(tmp_path):
    journal = tmp_path / "journal.jsonl"
    good = json.dumps(verdict("ok", 0.5, True))
    journal.write_bytes(b"\n".join([
        good.encode(),
        b'{"id": "cut", "score": 0.',  # cut by a crash
        b"\xff\xfe not utf-8",
        b'{"id": "nan", "time": 0, "source": "a", "score": NaN, "anomaly": true}',
        b"[1, 2]",
        json.dumps({**verdict("noflag", 0.5, True), "anomaly": "yes"}).encode(),  # a verdict of the wrong shape
        json.dumps(label("ok", "maybe")).encode(),  # an unknown label
        json.dumps({"hello": "world"}).encode(),
        b"",
    ]))
    records = read_records(journal)
    assert [v.id for v in records.verdicts] == ["ok"]
    assert records.labels == {}
    assert records.rejected == {"not_json": 1, "not_utf8": 1, "non_finite": 1, "not_object": 1,
                                "verdict_shape": 1, "label_shape": 1, "unknown_record": 1}
    assert records.bad_lines == 7
    assert records.first_rejected == f"{journal}:2 not_json"


def test_since_and_until_count_only_their_verdicts_while_the_window_sees_all(tmp_path):
    # Fixed-free check that the window is fed before `since`: the normal 1.4s at t < 10 raise the threshold
    # to 2.1, so 1.9 at t=10 is normal; started fresh at `since` it would have been judged against 1.5.
    scores = [1.4] * 6 + [1.9, 2.5]
    times = [0, 1, 2, 3, 4, 5, 10, 20]
    records = [verdict(f"s{i}", s, True, t=t) for i, (s, t) in enumerate(zip(scores, times, strict=True))]
    journal = write_journal(tmp_path / "journal.jsonl", records)
    cal = {"a": Calibration(scores=(1.0,) * 10, quantile=0.5, margin=1.5, bundle="b")}
    result = replay(read_records(journal), ThresholdConfig(window=10), cal, since=10, until=20)
    assert result.what_if.verdicts == 1 and result.what_if.alerts == 0
    assert result.recorded.alerts == 1


def test_one_source_can_be_replayed_alone(tmp_path):
    journal = write_journal(tmp_path / "journal.jsonl", [verdict("a1", 0.9, True, source="a"),
                                                         verdict("b1", 0.9, True, source="b")])
    result = replay(read_records(journal), ThresholdConfig(fixed=0.5), source="b")
    assert list(result.sources) == ["b"] and result.what_if.verdicts == 1


def test_reading_100000_lines_and_replaying_them_takes_seconds_not_minutes(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.gamma(4.0, 0.001, 100_000)
    journal = write_journal(tmp_path / "journal.jsonl",
                            [verdict(f"{i:032x}", float(s), bool(s > 0.01), source=f"s{i % 4}", t=i)
                             for i, s in enumerate(scores)])
    start = time.perf_counter()
    records = read_records(journal)
    result = replay(records, ThresholdConfig(quantile=0.99, margin=1.0, window=2000))
    elapsed = time.perf_counter() - start
    assert len(records.verdicts) == 100_000 and result.what_if.verdicts == 100_000 - 4 * 2000
    assert elapsed < 20, f"{elapsed:.1f} s"


# --- the daemon's own threshold -----------------------------------------------------------------------


def test_a_replay_with_the_daemons_settings_reproduces_the_flags_it_journaled(tmp_path, tiny_bundle):
    from monitor.daemon import Daemon

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "model": str(tiny_bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20}],
        # A small window and a low quantile: the window moves, and both outcomes occur among 34 images.
        "threshold": {"quantile": 0.8, "window": 10, "margin": 1.05},
        "metrics": {"enabled": False},
        "logging": {"summary_interval_s": 0},
    }))
    config = load_config(config_path)
    daemon = Daemon(config, config_path=config_path)
    daemon.start()
    waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
    waiter.start()
    try:
        rng = np.random.default_rng(7)
        images = [normal_image(rng) for _ in range(30)] + [anomalous_image(rng) for _ in range(4)]
        write_images(tmp_path / "inbox", images)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if config.output.journal.exists() and len(read_records(config.output.journal).verdicts) >= 34:
                break
            time.sleep(0.1)
    finally:
        daemon.stop()
        waiter.join(30)

    records = read_records(config.output.journal)
    assert len(records.verdicts) == 34 and records.bad_lines == 0
    flags = [v.anomaly for v in records.verdicts]
    assert 4 <= sum(flags) < 34  # both outcomes, so that agreement is not trivial
    calibration, missing = calibrations_for(config)
    assert missing == {} and calibration["line1"].scores  # the bundle's sidecar, read without TensorFlow

    same = replay(records, config.threshold, calibration)
    assert same.changed == []
    assert same.what_if == same.recorded

    other = replay(records, ThresholdConfig(fixed=min(v.score for v in records.verdicts) / 2), calibration)
    assert other.to_anomaly == 34 - sum(flags)  # the comparison does see a different setting


def test_read_calibration_takes_the_sidecars_scores_quantile_and_margin(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps(
        {"calibration": {"scores": [0.1, 0.2]}, "threshold": {"quantile": 0.99, "margin": 1.2}}))
    assert read_calibration(bundle) == Calibration((0.1, 0.2), 0.99, 1.2, str(bundle))
    (bundle / "bundle.json").write_text(json.dumps({"calibration": {"scores": []}, "threshold": {"quantile": 0.9}}))
    with pytest.raises(ReplayError, match="calibration.scores"):
        read_calibration(bundle)


# --- applying a setting -------------------------------------------------------------------------------

CONFIG = """\
# the line's monitor
model: {bundle}   # trained on 2026-01-10
sources:
  - name: line1
    folder: inbox
threshold:
  quantile: 0.999   # from the bundle's calibration
  window: 2000
# alerts follow
metrics:
  enabled: false
"""


def config_file(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text.format(bundle=tmp_path / "bundle"))
    return path


def test_apply_threshold_changes_only_the_threshold_keys_and_keeps_comments(tmp_path):
    path = config_file(tmp_path)
    before = path.read_text()

    change = apply_threshold(path, {"quantile": 0.995, "margin": 1.2}, by="ana")

    text = path.read_text()
    assert text == before.replace("quantile: 0.999 ", "quantile: 0.995 ").replace(
        "  window: 2000\n", "  window: 2000\n  margin: 1.2\n")
    config = load_config(path)
    assert (config.threshold.quantile, config.threshold.margin, config.threshold.window) == (0.995, 1.2, 2000)
    assert change.old["quantile"] == 0.999 and change.new["quantile"] == 0.995
    assert change.changed == {"quantile": (0.999, 0.995), "margin": (None, 1.2)}
    assert change.by == "ana"


def test_apply_threshold_to_fixed_removes_the_quantile_line(tmp_path):
    path = config_file(tmp_path)
    apply_threshold(path, {"fixed": 1e-05, "quantile": None}, by="ana")
    text = path.read_text()
    assert "quantile" not in text and "# alerts follow" in text and "# trained on 2026-01-10" in text
    assert load_config(path).threshold.fixed == 1e-05  # written as 1.0e-05: YAML reads 1e-05 as text


@pytest.mark.parametrize("section", ["", "threshold: {}\n", "threshold: {window: 500}  # inline\n"])
def test_apply_threshold_writes_a_section_that_is_missing_empty_or_inline(tmp_path, section):
    path = tmp_path / "config.yaml"
    path.write_text(f"model: {tmp_path / 'bundle'}\n{section}sources: [{{name: a, folder: in}}]\n")
    apply_threshold(path, {"margin": 2.0}, by="ana")
    threshold = load_config(path).threshold
    assert threshold.margin == 2.0
    assert threshold.window == (500 if "500" in section else 2000)


def test_apply_threshold_refuses_an_invalid_setting_and_leaves_the_file(tmp_path):
    from monitor.config import ConfigError

    path = config_file(tmp_path)
    before = path.read_text()
    with pytest.raises(ConfigError, match="threshold"):
        apply_threshold(path, {"fixed": 0.5}, by="ana")  # fixed beside quantile
    with pytest.raises(ValueError, match="not threshold keys"):
        apply_threshold(path, {"sources": []}, by="ana")
    assert path.read_text() == before


def test_apply_threshold_replaces_the_file_atomically(tmp_path, monkeypatch):
    path = config_file(tmp_path)
    path.chmod(0o640)
    before = path.read_text()

    def refused(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError):
        apply_threshold(path, {"quantile": 0.99}, by="ana")
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]

    monkeypatch.undo()
    apply_threshold(path, {"quantile": 0.99}, by="ana")
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)  # the service's permissions are kept


def test_the_threshold_changed_line_names_who_and_the_old_and_new_values():
    old = ThresholdConfig(quantile=0.999).model_dump()
    new = ThresholdConfig(quantile=0.995, margin=1.2).model_dump()
    event = threshold_changed_event(ThresholdChange(old, new, "ana"), now=12.5)
    assert list(event) == ["time", "event", "source", "detail", "by", "old", "new"]
    assert event["time"] == 12.5 and event["event"] == "threshold_changed" and event["source"] == "daemon"
    assert event["by"] == "ana" and event["old"] == old and event["new"] == new
    assert event["detail"] == "quantile 0.999 -> 0.995; margin unset -> 1.2"


# --- the command line ---------------------------------------------------------------------------------


def test_the_cli_prints_a_table_with_a_recorded_and_a_what_if_row(tmp_path, capsys):
    journal = labelled_journal(tmp_path / "journal.jsonl")
    assert main(["replay", "--journal", str(journal), "--fixed", "0.28"]) == 0
    out = capsys.readouterr().out
    assert "what-if: fixed 0.28" in out and "8 verdicts, 6 labelled" in out
    rows = {tuple(line.split()[:2]): line.split() for line in out.splitlines() if line.startswith("a ")}
    assert rows[("a", "recorded")][2:11] == ["8", "4", "50.00%", "2", "2", "2", "0", "0.500", "0.500"]
    assert rows[("a", "what-if")][2:] == ["8", "4", "50.00%", "3", "1", "1", "1", "0.750", "0.750", "1", "1"]


def test_the_cli_prints_one_json_object(tmp_path, capsys):
    journal = labelled_journal(tmp_path / "journal.jsonl")
    assert main(["replay", "--journal", str(journal), "--fixed", "0.28", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["what_if"]["tp"] == 3 and data["recorded"]["precision"] == 0.5
    assert data["sources"]["a"]["to_anomaly"] == 1 and data["journal"]["bad_lines"] == 0
    assert data["settings"]["fixed"] == 0.28


def test_the_cli_replays_a_configs_journal_with_its_bundles(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps(
        {"calibration": {"scores": [1.0] * 10}, "threshold": {"quantile": 0.5, "margin": 1.5}}))
    path = config_file(tmp_path)
    write_journal(tmp_path / "var" / "journal.jsonl", [verdict("c1", 1.7, True, source="line1")])
    assert main(["replay", "--config", str(path), "--margin", "2", "--json"]) == 0
    item = json.loads(capsys.readouterr().out)["sources"]["line1"]
    assert item["start"] == f"bundle {bundle}" and item["margin"] == 2.0 and item["quantile"] == 0.999
    assert item["what_if"]["alerts"] == 0 and item["to_normal"] == 1


@pytest.mark.parametrize("args", [
    [],
    ["--journal", "J", "--config", "C"],
    ["--journal", "J", "--quantile", "1.5"],
    ["--journal", "J", "--quantile", "abc"],
    ["--journal", "J", "--window", "3"],
    ["--journal", "J", "--fixed", "0.1", "--quantile", "0.9"],
    ["--journal", "J", "--since", "yesterday"],
    ["--journal", "J", "--since", "nan"],
    ["--journal", "J", "--until", "inf"],
    ["--journal", "J", "--apply", "--fixed", "0.1"],
    ["--journal", "missing.jsonl"],
    ["--journal", "J", "--source", "nobody"],
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args):
    journal = labelled_journal(tmp_path / "J")
    args = [str(journal) if a == "J" else str(tmp_path / a) if a.endswith(".jsonl") else a for a in args]
    assert main(["replay", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")


def test_cli_apply_writes_the_config_journals_the_change_and_signals_the_daemon(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps(
        {"calibration": {"scores": [1.0] * 10}, "threshold": {"quantile": 0.5, "margin": 1.5}}))
    path = config_file(tmp_path)
    journal = write_journal(tmp_path / "var" / "journal.jsonl", [verdict("c1", 1.7, True, source="line1")])
    # A stand-in for the daemon: it exits 7 on SIGHUP.
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                              "signal.signal(signal.SIGHUP, lambda *a: sys.exit(7))\n"
                              "print('ready', flush=True)\ntime.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        pidfile = tmp_path / "monitor.pid"
        pidfile.write_text(f"{child.pid}\n")
        assert main(["replay", "--config", str(path), "--quantile", "0.99", "--apply", "--by", "ana",
                     "--pidfile", str(pidfile)]) == 0
        assert child.wait(10) == 7
    finally:
        child.kill()
        child.wait()
    assert load_config(path).threshold.quantile == 0.99
    assert "  quantile: 0.99   # from the bundle's calibration\n" in path.read_text()  # a number, not '0.99'
    event = json.loads(journal.read_text().splitlines()[-1])
    assert event["event"] == "threshold_changed" and event["by"] == "ana"
    assert (event["old"]["quantile"], event["new"]["quantile"]) == (0.999, 0.99)
    err = capsys.readouterr().err
    assert "SIGHUP sent" in err
    records = read_records(journal)  # the journal still reads clean, the change as an event
    assert (records.events, records.threshold_changes, records.bad_lines) == (1, 1, 0)


def test_cli_apply_without_a_pid_says_how_to_reload(tmp_path, capsys):
    path = config_file(tmp_path)
    write_journal(tmp_path / "var" / "journal.jsonl", [verdict("c1", 1.7, True, source="line1")])
    assert main(["replay", "--config", str(path), "--fixed", "2", "--apply", "--by", "ana"]) == 0
    assert "reload the daemon: systemctl reload anomaly-monitor" in capsys.readouterr().err
    assert load_config(path).threshold.fixed == 2.0


def test_the_replay_command_does_not_import_tensorflow(tmp_path):
    journal = labelled_journal(tmp_path / "journal.jsonl")
    code = ("import sys\nfrom monitor.cli import main\n"
            f"assert main(['replay', '--journal', {str(journal)!r}, '--fixed', '0.3']) == 0\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
