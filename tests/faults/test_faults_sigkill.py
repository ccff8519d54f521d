"""Issue 11, SIGKILL: the daemon killed at random moments during bursts, again and again, loses nothing.

Each round starts the real daemon, lets another process rename a burst of files (some anomalous) into the
watched folder, and SIGKILLs the daemon after a random delay (seeded, so a failure replays). After the last
round a clean start and a SIGTERM drain finish the work. Then, from the journal, the quarantine and a real
webhook server:
- every file written has a verdict or a quarantine entry;
- no file has more than 2 verdicts, and the duplicates are at most one batch per kill;
- every anomaly verdict in the journal reached the webhook at least once (duplicates allowed).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from alert_servers import WebhookServer
from daemon_proc import DaemonProcess, wait_until
from imagegen import anomalous_image, normal_image, write_images

pytestmark = pytest.mark.slow

# The issue asks for about 20 rounds; 8 keep `make test` within its budget. Measured on 2 shared, busy cores:
# 8 rounds 124 s, 20 rounds 214 s, so about 7.5 s a round (each start loads TensorFlow): 20 rounds would add
# some 90 s to every test run. SIGKILL_ROUNDS=20 (and SIGKILL_SEED=n) runs the longer hunt.
ROUNDS = int(os.environ.get("SIGKILL_ROUNDS", "8"))
SEED = int(os.environ.get("SIGKILL_SEED", "11"))
BURST = 24  # files per round
ANOMALY_EVERY = 4  # every 4th file of a burst is defective
MAX_BATCH = 8
KILL_DELAY_S = (0.05, 0.6)  # after the writer starts; its burst takes about 0.5 s, so most kills land in it

# argv: staging folder, inbox, then file names. Renames each staged file into the inbox (a complete file
# appears at once, as from a camera PC's atomic upload), a little apart so the burst spans several batches.
_WRITER = textwrap.dedent("""
    import os, sys, time
    staging, inbox = sys.argv[1], sys.argv[2]
    for name in sys.argv[3:]:
        os.replace(os.path.join(staging, name), os.path.join(inbox, name))
        time.sleep(0.02)
""")


def _config(bundle: Path, hook_url: str) -> dict:
    return {
        "model": str(bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 20, "stable_s": 0.3,
                     "incomplete_timeout_s": 2}],
        "batching": {"max_batch": MAX_BATCH, "max_wait_ms": 20},
        "metrics": {"enabled": False},
        "logging": {"level": "INFO"},
        # Cooldown 0 and no digest: every anomaly is its own alert, so each one can be looked for.
        "alerts": {"backoff_initial_s": 0.05, "backoff_max_s": 0.2, "sinks": [
            {"type": "webhook", "name": "hook", "url": hook_url, "cooldown_s": 0, "digest_after": 0}]},
    }


def _stage_burst(staging: Path, round_no: int, rng: np.random.Generator) -> list[str]:
    """Write one round's files aside; returns their names (defective ones are named `bad`)."""
    names = []
    for i in range(BURST):
        bad = i % ANOMALY_EVERY == ANOMALY_EVERY - 1
        image = anomalous_image(rng) if bad else normal_image(rng)
        (path,) = write_images(staging, [image], prefix=f"r{round_no:02d}_{i:03d}_{'bad' if bad else 'good'}_")
        names.append(path.name)
    return names


def _quarantined(workdir: Path) -> set[str]:
    """Names of the original files the quarantine holds (from each reason file's `original:` line)."""
    names = set()
    for reason in (workdir / "var" / "quarantine").rglob("*.reason.txt"):
        for line in reason.read_text().splitlines():
            if line.startswith("original: "):
                names.add(Path(line.removeprefix("original: ")).name)
    return names


def test_sigkill_at_random_moments_loses_no_file_and_no_alert(
        tmp_path: Path, tiny_bundle: Path, subprocess_env: dict) -> None:
    rng = np.random.default_rng(SEED)
    delays = random.Random(SEED)
    staging = tmp_path / "staging"
    written: list[str] = []
    kills = 0
    with WebhookServer() as hook:
        daemon = DaemonProcess(tmp_path / "d", _config(tiny_bundle, f"{hook.url}/hook"), subprocess_env)
        inbox = daemon.workdir / "inbox"
        inbox.mkdir()
        try:
            for round_no in range(ROUNDS):
                names = _stage_burst(staging, round_no, rng)
                daemon.start(timeout=180)
                writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(staging), str(inbox), *names])
                time.sleep(delays.uniform(*KILL_DELAY_S))
                daemon.terminate(signal.SIGKILL)
                kills += 1
                assert writer.wait(30) == 0
                written += names
            # A clean run scores what the kills left, then SIGTERM drains and stops it.
            daemon.start(timeout=180)
            expected = set(written)
            wait_until(lambda: expected <= {Path(v["path"]).name for v in daemon.verdicts()} | _quarantined(
                daemon.workdir), timeout=120, interval=0.2)
            # Alerts are sent after their verdicts: give the outbox time to empty before the drain.
            # (Pending alerts are var/state/outbox/<sink>/*.json; parked ones live in subfolders.)
            pending = daemon.workdir / "var" / "state" / "outbox" / "hook"
            wait_until(lambda: not any(pending.glob("*.json")), timeout=60, interval=0.2)
            assert daemon.terminate(signal.SIGTERM) == 0, daemon.log()[-3000:]
        finally:
            daemon.kill()
        received = hook.received()

    verdicts = daemon.verdicts()
    scored = Counter(Path(v["path"]).name for v in verdicts)
    quarantined = _quarantined(daemon.workdir)

    missing = set(written) - set(scored) - quarantined
    assert not missing, f"{len(missing)} files have neither a verdict nor a quarantine entry: {sorted(missing)[:10]}"
    assert set(scored) <= set(written)

    twice = {name: n for name, n in scored.items() if n > 1}
    assert max(scored.values()) <= 2, f"files scored more than twice: {twice}"
    duplicates = sum(n - 1 for n in scored.values())
    assert duplicates <= kills * MAX_BATCH, f"{duplicates} duplicate verdicts after {kills} kills: {twice}"

    # The defective files are flagged (else the alert check below would check nothing).
    anomalies = [v for v in verdicts if v["anomaly"]]
    assert {Path(v["path"]).name for v in anomalies} >= {n for n in written if "_bad_" in n} - quarantined

    # Each anomaly verdict's alert carries its journal line: match on (path, time), which is unique.
    alerted = {(a["path"], a["time"]) for p in received if p["kind"] == "anomaly" for a in p["anomalies"]}
    lost = [v for v in anomalies if (v["path"], v["time"]) not in alerted]
    assert not lost, f"{len(lost)} of {len(anomalies)} anomaly alerts never reached the webhook: {lost[:5]}"

    events = [r["event"] for r in daemon.records() if "event" in r]
    assert events.count("daemon_start") == ROUNDS + 1 and events[-1] == "daemon_stop", events
    assert "Traceback" not in daemon.log()
    # Where the kills landed: how much of each round's own burst its run scored before the kill (0 and BURST
    # are kills before and after the burst; the ones between are the kills that matter).
    runs: list[Counter] = []
    for r in daemon.records():
        if r.get("event") == "daemon_start":
            runs.append(Counter())
        elif "score" in r and runs:
            runs[-1][Path(r["path"]).name[:3]] += 1
    landed = [runs[i][f"r{i:02d}"] for i in range(ROUNDS)]
    print(f"\nsigkill: own-burst verdicts before each kill (of {BURST}): {landed}")
    print(f"sigkill: {ROUNDS} rounds, {len(written)} files, {len(verdicts)} verdicts, {duplicates} duplicates, "
          f"{len(quarantined)} quarantined, {len(anomalies)} anomalies, {len(received)} webhook posts")
