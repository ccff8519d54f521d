"""The soak (benchmarks/soak.py) for 2 minutes: RSS, fds, threads and latency of the real daemon hold steady.

`make soak` runs the same code for an hour; this short run catches a fast leak (an fd or a thread per file
or per frame, a latency that climbs) in every `make test`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from soak import run_soak  # noqa: E402

pytestmark = pytest.mark.slow

SECONDS = 120
RATE = 2.0  # files/s: a lower rate than `make soak`, for a suite that shares 2 cores
SAMPLE_EVERY = 5.0  # 24 samples: the compared thirds hold 8 each


@pytest.mark.timeout(SECONDS + 240)  # the run, the daemon's start and its drain
def test_two_minute_soak_shows_no_growth(tmp_path: Path, tiny_bundle: Path, subprocess_env: dict) -> None:
    result = run_soak(tiny_bundle, tmp_path, SECONDS, rate=RATE, camera_fps=2.0, sample_every=SAMPLE_EVERY,
                      env=subprocess_env)
    summary = result.summary()
    print(summary)
    assert result.ok, summary
    assert len(result.samples) >= SECONDS / SAMPLE_EVERY - 2
    totals = result.totals
    # The feed really ran: nearly every file written was scored, and the camera was scored beside it.
    assert totals["files_written"] >= 0.9 * SECONDS * RATE
    assert totals["files_unscored"] <= 2, totals
    assert totals["camera_verdicts"] >= SECONDS, totals  # 2 fps for 120 s, with slack for reconnects
