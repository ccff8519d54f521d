"""after_scoring (keep, move, delete) of a folder source, retention of the sorted folder, and `paused: true`.

Real files and a real folder source throughout; the move after the journal and the start-paused source also
against a real in-process daemon scoring with the session's tiny model.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from imagegen import anomalous_image, encode, normal_image
from inprocess import FolderLine

from monitor import metrics
from monitor.config import ConfigError, FolderSourceConfig, load_config
from monitor.daemon import Daemon
from monitor.sources.base import NotPausable
from monitor.sources.folder import FolderSource
from monitor.sources.ledger import Ledger
from monitor.sources.quarantine import Quarantine
from monitor.sources.sorting import Sorter

pytestmark = pytest.mark.timeout(120)

TODAY = time.strftime("%Y-%m-%d")


def png(seed: int, size: int = 32) -> bytes:
    return encode(normal_image(np.random.default_rng(seed), size))


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def counter(metric, *labels: str) -> float:
    return metric.labels(*labels)._value.get()


class Line(FolderLine):
    """A folder source with its queue, ledger, quarantine and sorted folder under `tmp_path`; `score` plays the
    daemon: it takes frames from the queue and acknowledges each with a verdict, as after the journal's sync."""

    def __init__(self, tmp_path: Path, name: str, **options) -> None:
        self.sorted = tmp_path / "sorted" / name
        super().__init__(tmp_path, name, 256, self.sorted, settle_ms=20, **options)

    def score(self, n: int, anomalous: set[str] = frozenset()) -> list[str]:
        frames = self.frames(n)
        for frame in frames:
            self.source.acknowledge(frame, anomaly=frame.path.name in anomalous)
        return sorted(f.path.name for f in frames)

    def sorted_files(self) -> dict[str, list[str]]:
        return {verdict: sorted(str(p.relative_to(self.sorted / verdict)) for p in (self.sorted / verdict).rglob("*")
                                if p.is_file()) for verdict in ("ok", "ng")}

    def ledger_lines(self) -> list[dict]:
        if not self.ledger_path.exists():
            return []
        return [json.loads(line) for line in self.ledger_path.read_text().splitlines() if line.strip()]


@pytest.fixture
def line(tmp_path, request) -> Iterator[Line]:
    made: list[Line] = []

    def make(**options) -> Line:
        made.append(Line(tmp_path, request.node.name[:40].replace("[", "_").replace("]", "_"), **options))
        return made[-1]

    yield make
    for each in made:
        each.stop()


# --- move, delete, keep ----------------------------------------------------------------------------

def test_move_sorts_files_into_ok_and_ng_folders_of_the_verdict_date(line):
    ln = line(after_scoring="move")
    ln.start()
    (ln.inbox / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        (ln.inbox / name).write_bytes(png(len(name)))
    assert ln.score(3, anomalous={"b.png"}) == ["a.png", "b.png", "c.png"]
    assert wait_for(lambda: not any(p.is_file() for p in ln.inbox.rglob("*")))
    assert ln.sorted_files() == {"ok": [f"{TODAY}/a.png", f"{TODAY}/sub/c.png"], "ng": [f"{TODAY}/b.png"]}


def test_a_reused_name_is_sorted_beside_the_earlier_file_not_over_it(line):
    ln = line(after_scoring="move")
    ln.start()
    for seed in (1, 2):
        (ln.inbox / "latest.png").write_bytes(png(seed))
        assert ln.score(1) == ["latest.png"]
        assert wait_for(lambda: not (ln.inbox / "latest.png").exists())
    assert ln.sorted_files()["ok"] == [f"{TODAY}/latest.png", f"{TODAY}/latest_2.png"]
    assert (ln.sorted / "ok" / TODAY / "latest_2.png").read_bytes() == png(2)


def test_delete_removes_each_scored_file(line):
    ln = line(after_scoring="delete")
    before = counter(metrics.FILES_AFTER_SCORING, ln.config.name, "deleted")
    ln.start()
    for i in range(3):
        (ln.inbox / f"d{i}.png").write_bytes(png(i))
    assert ln.score(3, anomalous={"d1.png"}) == ["d0.png", "d1.png", "d2.png"]
    assert wait_for(lambda: list(ln.inbox.iterdir()) == [])
    # Counted just after each unlink: the inbox may be empty a moment before the third count.
    assert wait_for(lambda: counter(metrics.FILES_AFTER_SCORING, ln.config.name, "deleted") == before + 3)
    assert not ln.sorted.exists()


def test_keep_leaves_the_file_and_the_ledger_remembers_it(line):
    ln = line()  # after_scoring: keep, the default
    ln.start()
    (ln.inbox / "k.png").write_bytes(png(1))
    assert ln.score(1) == ["k.png"]
    assert wait_for(lambda: [r["p"] for r in ln.ledger_lines()] == ["k.png"])
    assert (ln.inbox / "k.png").exists()
    assert ln.source.sorter is None and not ln.sorted.exists()


def test_the_ledger_stays_empty_while_a_move_line_sorts_many_files(line):
    ln = line(after_scoring="move")
    ln.start()
    for i in range(150):
        (ln.inbox / f"m{i:03d}.png").write_bytes(png(i % 7))
    assert len(ln.score(150)) == 150
    assert wait_for(lambda: list(ln.inbox.iterdir()) == [], timeout=30)
    assert len(ln.source.ledger) == 0
    assert ln.ledger_lines() == []
    assert len(ln.sorted_files()["ok"]) == 150
    ln.stop()
    ln.start()  # nothing is left to score at the next start either
    assert ln.frames(1, timeout=0.8) == []


def test_a_file_overwritten_while_in_flight_is_scored_again_not_sorted_as_the_old_one(line):
    ln = line(after_scoring="move")
    ln.start()
    path = ln.inbox / "latest.png"
    path.write_bytes(png(1))
    (old,) = ln.frames(1)
    path.write_bytes(png(2, size=40))  # the camera PC overwrote it before the verdict came
    ln.source.acknowledge(old, anomaly=False)
    (new,) = ln.frames(1)
    assert new.image.shape == (40, 40)
    assert ln.sorted_files() == {"ok": [], "ng": []}
    ln.source.acknowledge(new, anomaly=True)
    assert wait_for(lambda: ln.sorted_files()["ng"] == [f"{TODAY}/latest.png"])


def test_a_quarantined_frame_leaves_no_ledger_entry_on_a_move_line(line, tmp_path):
    ln = line(after_scoring="move")
    ln.start()
    (ln.inbox / "q.png").write_bytes(png(1))
    (frame,) = ln.frames(1)
    # The daemon's scoring failed and it quarantined the file, then acknowledged without a verdict.
    assert Quarantine(tmp_path / "quarantine").put(ln.config.name, frame.path, "undecodable", "test") is not None
    ln.source.acknowledge(frame, anomaly=None)
    assert len(ln.source.ledger) == 0 and ln.ledger_lines() == []
    assert ln.sorted_files() == {"ok": [], "ng": []}


# --- a refused move ---------------------------------------------------------------------------------

def test_a_refused_move_leaves_the_file_in_place_counted_and_moves_it_once_the_disk_takes_it(line):
    ln = line(after_scoring="move")
    ln.sorted.mkdir(parents=True)
    (ln.sorted / "ng").write_text("a file where the ng folder must be")  # mkdir of ng/DATE fails: ENOTDIR
    failed = counter(metrics.FILES_AFTER_SCORING_FAILED, ln.config.name, "ENOTDIR")
    ln.start()
    (ln.inbox / "bad.png").write_bytes(png(1))
    assert ln.score(1, anomalous={"bad.png"}) == ["bad.png"]
    assert wait_for(lambda: counter(metrics.FILES_AFTER_SCORING_FAILED, ln.config.name, "ENOTDIR") == failed + 1), (
        failed, counter(metrics.FILES_AFTER_SCORING_FAILED, ln.config.name, "ENOTDIR"))
    assert (ln.inbox / "bad.png").read_bytes() == png(1)  # never lost
    assert [(r["p"], r["a"]) for r in ln.ledger_lines()] == [("bad.png", True)]  # not scored again, verdict kept
    ln.stop()
    ln.start()
    assert ln.frames(1, timeout=0.8) == []  # a restart does not score it again
    assert (ln.inbox / "bad.png").exists()  # the first tick tried again, refused again
    (ln.sorted / "ng").unlink()  # the operator fixes the disk
    assert ln.source.sorter.retry_due() == 1  # what the next minute's tick does
    assert ln.sorted_files() == {"ok": [], "ng": [f"{TODAY}/bad.png"]}
    assert not (ln.inbox / "bad.png").exists()
    assert len(ln.source.ledger) == 0


# --- a crash between the journal and the move --------------------------------------------------------

def _verdict_record(source: str, path: Path, anomaly: bool) -> dict:
    st = path.stat()
    return {"source": source, "path": str(path), "score": 0.1, "threshold": 0.05, "anomaly": anomaly,
            "file": {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}}


def test_after_a_crash_between_journal_and_move_the_file_is_moved_at_start_and_not_scored_again(line):
    ln = line(after_scoring="move")
    ln.inbox.mkdir(parents=True)
    for name in ("crashed_ok.png", "crashed_ng.png", "never_scored.png"):
        (ln.inbox / name).write_bytes(png(len(name)))
    # The journal holds the last batch's verdicts; the daemon died before the moves (no ledger line either).
    records = [_verdict_record(ln.config.name, ln.inbox / "crashed_ok.png", False),
               _verdict_record(ln.config.name, ln.inbox / "crashed_ng.png", True)]
    ln.start(records)
    assert [f.path.name for f in ln.frames(1)] == ["never_scored.png"]
    assert ln.frames(1, timeout=0.8) == []  # the two with a verdict are not scored again
    assert wait_for(lambda: ln.sorted_files() == {"ok": [f"{TODAY}/crashed_ok.png"],
                                                  "ng": [f"{TODAY}/crashed_ng.png"]})
    assert sorted(p.name for p in ln.inbox.iterdir()) == ["never_scored.png"]


def test_a_ledger_line_with_a_verdict_left_by_a_crash_is_moved_at_start(line):
    ln = line(after_scoring="delete")
    ln.inbox.mkdir(parents=True)
    path = ln.inbox / "due.png"
    path.write_bytes(png(1))
    st = path.stat()
    ln.ledger_path.parent.mkdir(parents=True)
    ln.ledger_path.write_text(json.dumps({"p": "due.png", "s": st.st_size, "m": st.st_mtime_ns, "a": False}) + "\n")
    ln.start()
    assert wait_for(lambda: not path.exists())
    assert ln.frames(1, timeout=0.5) == []


# --- retention ---------------------------------------------------------------------------------------

def _sorted_file(root: Path, rel: str, size: int, age_days: float) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    t = time.time() - age_days * 86_400
    os.utime(path, (t, t))
    return path


def _sorter(tmp_path: Path, **limits) -> Sorter:
    config = FolderSourceConfig(name="ret", folder=tmp_path / "inbox", after_scoring="move", **limits)
    return Sorter(config, tmp_path / "sorted", Ledger(tmp_path / "ledger.jsonl"), lambda *_: None)


def test_retention_removes_files_older_than_the_age_limit_and_their_empty_day_folders(tmp_path):
    sorter = _sorter(tmp_path, sorted_max_age_days=7, sorted_max_bytes=None)
    old = _sorted_file(sorter.root, "ok/2020-01-01/old.png", 10, age_days=8)
    older_ng = _sorted_file(sorter.root, "ng/2020-01-01/sub/older.png", 10, age_days=30)
    recent = _sorted_file(sorter.root, "ok/2020-01-09/recent.png", 10, age_days=6)
    assert sorter.prune() == (2, 0)
    assert not old.exists() and not older_ng.exists() and recent.exists()
    assert not (sorter.root / "ok/2020-01-01").exists() and not (sorter.root / "ng/2020-01-01").exists()
    assert (sorter.root / "ng").is_dir()  # the verdict folders stay
    assert metrics.SORTED_BYTES.labels("ret")._value.get() == 10


def test_retention_removes_the_oldest_files_beyond_the_byte_limit(tmp_path):
    sorter = _sorter(tmp_path, sorted_max_age_days=None, sorted_max_bytes=250)
    files = [_sorted_file(sorter.root, f"ok/d/f{i}.png", 100, age_days=5 - i) for i in range(5)]  # f0 oldest
    assert sorter.prune() == (0, 3)
    assert [f.exists() for f in files] == [False, False, False, True, True]
    assert sorter.prune() == (0, 0)


def test_retention_is_checked_once_a_minute_not_per_file(line):
    ln = line(after_scoring="move", sorted_max_bytes=1)
    ln.start()
    # The first tick has run (it sets _next_tick before pruning, and the files below arrive after): the sorted
    # folder may exist before it, and waiting for that let the first tick prune the files this test counts.
    assert wait_for(lambda: ln.source.sorter._next_tick > 0)
    for i in range(3):
        (ln.inbox / f"r{i}.png").write_bytes(png(i))
    assert len(ln.score(3)) == 3
    assert wait_for(lambda: len(ln.sorted_files()["ok"]) == 3)
    time.sleep(1.5)
    assert len(ln.sorted_files()["ok"]) == 3  # over the limit, but the minute has not passed
    ln.source.sorter._next_tick = 0.0  # as a minute later
    ln.source.sorter._wake.set()
    assert wait_for(lambda: ln.sorted_files()["ok"] == [])


# --- config -------------------------------------------------------------------------------------------

def _config(tmp_path: Path, source: dict, **top) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"name": "a", "folder": "in", **source}], **top}))
    return path


def test_the_default_sorted_folder_is_beside_the_state_folder(tmp_path):
    from monitor.config import sorted_folder_of

    config = load_config(_config(tmp_path, {"after_scoring": "move"}))
    assert sorted_folder_of(config.sources[0], config.output.state) == tmp_path / "var" / "sorted" / "a"


@pytest.mark.parametrize("sorted_folder", ["in/sorted", "in", "."])
def test_a_sorted_folder_overlapping_the_watched_folder_is_refused_naming_the_key(tmp_path, sorted_folder):
    path = _config(tmp_path, {"after_scoring": "move", "sorted_folder": sorted_folder})
    with pytest.raises(ConfigError, match=r"conf\.yaml: sources\[0\]\.sorted_folder: .* overlaps"):
        load_config(path)


def test_a_sorted_folder_inside_another_sources_folder_or_an_output_is_refused(tmp_path):
    text = {"sources": [{"name": "a", "folder": "in", "after_scoring": "move", "sorted_folder": "out"},
                        {"name": "b", "folder": "in2", "after_scoring": "move", "sorted_folder": "in/x"}]}
    (tmp_path / "conf.yaml").write_text(yaml.safe_dump(text))
    with pytest.raises(ConfigError, match=r"sources\[1\]\.sorted_folder: .*the folder source 'a' watches"):
        load_config(tmp_path / "conf.yaml")
    path = _config(tmp_path, {"after_scoring": "move", "sorted_folder": "var/evidence/s"})
    with pytest.raises(ConfigError, match=r"sources\[0\]\.sorted_folder: .*output\.evidence"):
        load_config(path)


def test_a_sorted_folder_is_not_checked_when_files_are_kept(tmp_path):
    assert load_config(_config(tmp_path, {"sorted_folder": "in/sorted"})).sources[0].after_scoring == "keep"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("after_scoring", "archive", "Input should be 'keep', 'move' or 'delete'"),
    ("sorted_max_age_days", 0, "Input should be greater than 0"),
    ("sorted_max_bytes", -5, "Input should be greater than 0"),
    ("paused", "maybe", "Input should be a valid boolean"),
])
def test_bad_values_name_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=rf"sources\[0\]\.{key}: {message}"):
        load_config(_config(tmp_path, {key: value}))


# --- paused: true -------------------------------------------------------------------------------------

def test_a_source_configured_paused_reads_no_backlog_file_until_resumed(line):
    ln = line(paused=True)
    ln.inbox.mkdir(parents=True)
    (ln.inbox / "backlog.png").write_bytes(png(1))
    source = FolderSource(ln.config, ln.queue, Ledger(ln.ledger_path), Quarantine(ln.quarantine))
    ln.source = source
    source.pause_at_start()
    source.start()
    assert source.state == "paused"
    assert ln.frames(1, timeout=1.0) == []
    source.resume()
    assert [f.path.name for f in ln.frames(1)] == ["backlog.png"]
    with pytest.raises(NotPausable):
        source.pause_at_start()  # once started, pause() is the way


def _write_daemon_config(path: Path, bundle: Path, **source) -> None:
    path.write_text(yaml.safe_dump({
        "model": str(bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20, **source}],
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "logging": {"summary_interval_s": 0},
    }))


def _journal(daemon: Daemon) -> list[dict]:
    path = daemon.config.output.journal
    if not path.exists():
        return []
    return [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if "score" in r]


@pytest.fixture
def run_daemon(tmp_path, tiny_bundle):
    started: list[tuple[Daemon, threading.Thread]] = []

    def run(**source) -> Daemon:
        config_path = tmp_path / "config.yaml"
        _write_daemon_config(config_path, tiny_bundle, **source)
        daemon = Daemon(load_config(config_path), config_path=config_path)
        daemon.start()
        waiter = threading.Thread(target=daemon.wait, name="daemon-wait")
        waiter.start()
        started.append((daemon, waiter))
        return daemon

    yield run
    for daemon, waiter in started:
        daemon.stop()
        waiter.join(30)


def test_a_daemon_sorts_each_file_by_its_journal_verdict(tmp_path, run_daemon):
    rng = np.random.default_rng(5)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(4):
        (inbox / f"good{i}.png").write_bytes(encode(normal_image(rng)))
    for i in range(2):
        (inbox / f"bad{i}.png").write_bytes(encode(anomalous_image(rng)))
    daemon = run_daemon(after_scoring="move")
    sorted_root = tmp_path / "var" / "sorted" / "line1"
    assert wait_for(lambda: len(_journal(daemon)) == 6 and list(inbox.iterdir()) == [], timeout=60)
    verdicts = {Path(r["path"]).name: r["anomaly"] for r in _journal(daemon)}
    assert any(verdicts.values()) and not all(verdicts.values())
    for name, anomaly in verdicts.items():
        assert (sorted_root / ("ng" if anomaly else "ok") / TODAY / name).is_file(), name
    assert len(daemon.sources.sources["line1"].ledger) == 0


def test_a_daemon_configured_paused_scores_nothing_until_resumed_then_each_backlog_file_once(tmp_path, run_daemon):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"held{i}.png").write_bytes(png(i))
    daemon = run_daemon(paused=True)
    url = f"http://127.0.0.1:{daemon.metrics_port}"
    assert wait_for(lambda: requests.get(f"{url}/-/ready", timeout=5).status_code == 200)
    status = requests.get(f"{url}/api/status", timeout=5).json()
    assert [s["state"] for s in status["sources"]] == ["paused"]
    time.sleep(1.5)
    assert _journal(daemon) == []
    assert requests.post(f"{url}/api/sources/line1/resume", timeout=5).status_code == 200
    assert wait_for(lambda: len(_journal(daemon)) == 3, timeout=30)
    time.sleep(1.0)
    assert sorted(Path(r["path"]).name for r in _journal(daemon)) == ["held0.png", "held1.png", "held2.png"]


# --- a real crash ----------------------------------------------------------------------------------------

def test_a_daemon_killed_while_sorting_loses_no_file_and_sorts_each_one_once(tmp_path, tiny_bundle, subprocess_env):
    from daemon_proc import DaemonProcess

    workdir = tmp_path / "d"
    inbox = workdir / "inbox"
    inbox.mkdir(parents=True)
    names = [f"f{i:03d}.png" for i in range(120)]
    for i, name in enumerate(names):
        (inbox / name).write_bytes(png(i))
    config = {"model": str(tiny_bundle), "metrics": {"enabled": False},
              "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20, "after_scoring": "move"}],
              "batching": {"max_batch": 8, "max_wait_ms": 20}}
    daemon = DaemonProcess(workdir, config, subprocess_env)
    try:
        daemon.start()
        assert wait_for(lambda: len(daemon.verdicts()) >= 20, timeout=60)
        daemon.kill()  # SIGKILL mid-backlog: some files scored and moved, some scored and not yet moved
        daemon.start()
        sorted_root = workdir / "var" / "sorted" / "line1"
        assert wait_for(lambda: list(inbox.iterdir()) == [], timeout=90), sorted(p.name for p in inbox.iterdir())
    finally:
        daemon.terminate()
    verdicts = [Path(r["path"]).name for r in daemon.verdicts()]
    assert set(verdicts) == set(names)
    assert len(verdicts) - len(names) <= 8  # at most the batch the kill cut before its journal sync
    moved = sorted(p.name for p in sorted_root.rglob("*.png"))
    assert moved == names  # each file once, none lost, none twice
