"""Typed records passed between pipeline stages."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np


class FileKey(NamedTuple):
    """One version of a folder file: a camera PC that overwrites `latest.png` makes a new version."""

    name: str  # path relative to the watched folder, POSIX separators
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Frame:
    """One decoded image waiting to be scored, from a folder file or a camera."""

    source: str
    image: np.ndarray  # uint8 or uint16, HxW or HxWxC (BGR/BGRA as OpenCV decodes it)
    frame_time: float  # wall-clock seconds: when the file arrived or the camera captured the frame
    path: Path | None = None  # set for folder files, None for camera frames
    file_key: FileKey | None = None  # folder files only
    # A camera with an `roi`: the whole frame the crop in `image` came from, so the evidence can show where
    # the ROI sits on the part. None for files and for cameras without an ROI.
    full_frame: np.ndarray | None = None
    # A folder file's bytes as read: a kept original is exactly the file that was scored, even when the
    # camera PC overwrites it a moment later. None for camera frames.
    data: bytes | None = field(default=None, repr=False)
    enqueued: float = field(default_factory=time.monotonic)  # monotonic, for max-wait and latency

    @property
    def is_file(self) -> bool:
        return self.path is not None


def local_time(ts: float) -> str:
    """Wall-clock seconds as the line's local time with its UTC offset: ``2026-11-26 17:03:12 +01:00``.

    People on the line read alerts and evidence against the clock on the wall, so texts use the process's
    time zone (TZ, which a systemd unit may set); the journal keeps Unix seconds.
    """
    moment = dt.datetime.fromtimestamp(ts).astimezone()
    offset = moment.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{moment:%Y-%m-%d %H:%M:%S} {sign}{hours:02d}:{mins:02d}"


@dataclass(frozen=True)
class Region:
    """A box in pixels (x, y: top-left corner; w, h: size): where on the part the error is hottest."""

    x: int
    y: int
    w: int
    h: int

    def to_json(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}

    @staticmethod
    def from_json(data: dict | None) -> Region | None:
        """The region of a journal line or an alert's verdict, or None when it has none (or a malformed one)."""
        if not isinstance(data, dict):
            return None
        try:
            return Region(int(data["x"]), int(data["y"]), int(data["w"]), int(data["h"]))
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> str:
        """The box as a person reads it: ``x=120 y=48 (16 x 9 px)``."""
        return f"x={self.x} y={self.y} ({self.w} x {self.h} px)"


def new_verdict_id() -> str:
    """A fresh verdict id: 32 hex digits, 128 random bits (a fifth of uuid4's cost, made once per image)."""
    return os.urandom(16).hex()


def new_verdict_ids(n: int) -> list[str]:
    """`n` fresh verdict ids from one read of the kernel's random source (one system call per batch)."""
    digits = os.urandom(16 * n).hex()
    return [digits[i:i + 32] for i in range(0, 32 * n, 32)]


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
    file_key: FileKey | None = None
    model: str | None = None  # the config's name of the model that scored it
    model_id: str | None = None  # that bundle's content identity (monitor.model.bundle.bundle_identity)
    # Anomalies: the hottest region of the error map in the pixels of the image the source delivered (a
    # file; a camera's whole frame, ROI offset included). See monitor.region.
    region: Region | None = None
    # The kept full-resolution copy of the input (output.originals), when the config kept this one.
    original: Path | None = None
    # What a label, an alert's link and the review page name this verdict by: random, so two daemons, a
    # restart or a replayed journal never reuse one.
    id: str = field(default_factory=new_verdict_id)
    # A shadow model's verdict on the same frame as the primary verdict `shadow_of`: journaled for comparison
    # (`monitor compare`), never alerted, never labelled, no evidence.
    shadow: bool = False
    shadow_of: str | None = None

    def to_json(self) -> dict:
        """The journal's line for this verdict (see README, 'Journal')."""
        record = {
            "id": self.id,
            "time": self.scored_at,
            "frame_time": self.frame_time,
            "source": self.source,
            "path": str(self.path) if self.path is not None else None,
            "score": self.score,
            "threshold": self.threshold,
            "anomaly": self.anomaly,
            "evidence": str(self.evidence) if self.evidence is not None else None,
        }
        if self.region is not None:
            record["region"] = self.region.to_json()
        if self.original is not None:
            record["original"] = str(self.original)
        if self.model is not None:
            record["model"] = self.model
            record["model_id"] = self.model_id
        if self.file_key is not None:
            # The scored file version: a restart after a crash re-derives the ledger from these.
            record["file"] = self.file_key._asdict()
        if self.shadow:
            record["shadow"] = True
            record["shadow_of"] = self.shadow_of
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
