"""Typed records passed between pipeline stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded image waiting to be scored, from a folder file or a camera."""

    source: str
    image: np.ndarray  # uint8 or uint16, HxW or HxWxC (BGR/BGRA as OpenCV decodes it)
    frame_time: float  # wall-clock seconds: when the file arrived or the camera captured the frame
    path: Path | None = None  # set for folder files, None for camera frames
    file_key: tuple[str, int, int] | None = None  # folder files: (path in the folder, size, mtime_ns)
    enqueued: float = field(default_factory=time.monotonic)  # monotonic, for max-wait and latency

    @property
    def is_file(self) -> bool:
        return self.path is not None


@dataclass(frozen=True)
class Verdict:
    """The judgement of one frame: its score against the threshold of its source."""

    source: str
    frame_time: float
    scored_at: float  # wall-clock seconds
    score: float
    threshold: float
    anomaly: bool
    path: Path | None = None
    evidence: Path | None = None
    file_key: tuple[str, int, int] | None = None

    def to_json(self) -> dict:
        """The journal's line for this verdict (see README, 'Journal')."""
        record = {
            "time": self.scored_at,
            "frame_time": self.frame_time,
            "source": self.source,
            "path": str(self.path) if self.path is not None else None,
            "score": self.score,
            "threshold": self.threshold,
            "anomaly": self.anomaly,
            "evidence": str(self.evidence) if self.evidence is not None else None,
        }
        if self.file_key is not None:
            # The scored file version: a restart after a crash re-derives the ledger from these.
            record["file"] = {"name": self.file_key[0], "size": self.file_key[1], "mtime_ns": self.file_key[2]}
        return record


@dataclass(frozen=True)
class SourceEvent:
    """Something that happened to a source or the daemon, not a scored image.

    kind: "camera_lost", "camera_found", "daemon_start", "daemon_stop".
    """

    source: str
    kind: str
    time: float
    detail: str = ""

    def to_json(self) -> dict:
        return {"time": self.time, "source": self.source, "event": self.kind, "detail": self.detail}
