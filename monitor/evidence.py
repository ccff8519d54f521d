"""Side-by-side evidence images (input | reconstruction | error heat map) and their retention."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from monitor.files import atomic_write, safe_name

log = logging.getLogger(__name__)

PANEL_MIN_SIDE = 192  # small model inputs are upscaled so a person can see the defect
HEADER_HEIGHT = 44


def _to_bgr_u8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    u8 = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR) if u8.ndim == 2 else u8


def _heat_map(error_map: np.ndarray) -> np.ndarray:
    error_map = np.asarray(error_map, dtype=np.float32)
    top = float(error_map.max())
    scaled = error_map / top if top > 0 else error_map
    return cv2.applyColorMap(np.clip(scaled * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)


def render_evidence(
    input_image: np.ndarray,
    reconstruction: np.ndarray,
    error_map: np.ndarray,
    score: float,
    threshold: float,
    title: str = "",
) -> np.ndarray:
    """Compose input | reconstruction | error heat map (inputs in [0, 1]) with score text; BGR uint8."""
    panels = [_to_bgr_u8(input_image), _to_bgr_u8(reconstruction), _heat_map(error_map)]
    h, w = panels[0].shape[:2]
    factor = max(1, int(np.ceil(PANEL_MIN_SIDE / max(1, min(h, w)))))
    size = (w * factor, h * factor)
    gap = np.full((size[1], 4, 3), 255, np.uint8)
    row = [cv2.resize(p, size, interpolation=cv2.INTER_NEAREST) for p in panels]
    body = np.hstack([row[0], gap, row[1], gap, row[2]])
    header = np.full((HEADER_HEIGHT, body.shape[1], 3), 32, np.uint8)
    verdict = "ANOMALY" if score > threshold else "normal"
    colour = (60, 60, 255) if score > threshold else (120, 220, 120)
    cv2.putText(header, f"{verdict}  score {score:.6g}  threshold {threshold:.6g}", (6, 18),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    cv2.putText(header, f"{title}   input | reconstruction | error", (6, 37),
                cv2.FONT_HERSHEY_SIMPLEX, 0.42, (230, 230, 230), 1, cv2.LINE_AA)
    return np.vstack([header, body])


class EvidenceStore:
    """Writes evidence PNGs into one folder and removes the oldest beyond a count or byte limit."""

    def __init__(self, folder: Path, max_files: int = 5000, max_bytes: int = 2**30) -> None:
        self.folder = Path(folder)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        existing = sorted(
            (p for p in self.folder.glob("*.png") if p.is_file()), key=lambda p: (p.stat().st_mtime, p.name)
        )
        self._files: deque[tuple[Path, int]] = deque((p, p.stat().st_size) for p in existing)
        self._bytes = sum(size for _, size in self._files)
        self._counter = 0
        self._enforce()

    def save(self, image: np.ndarray, source: str, frame_time: float, stem: str = "frame") -> Path:
        """Write an evidence image; the name sorts by time and says the source and the input's name."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(frame_time)) + f"{frame_time % 1:.3f}"[1:]
        with self._lock:
            self._counter += 1
            name = f"{stamp}Z_{safe_name(source)}_{safe_name(stem)[:80]}_{self._counter}.png"
            path = self.folder / name
            ok, buf = cv2.imencode(".png", image)
            if not ok:
                raise OSError(f"could not encode evidence image {name}")
            atomic_write(path, buf.tobytes())
            self._files.append((path, len(buf)))
            self._bytes += len(buf)
            self._enforce()
        return path

    def _enforce(self) -> None:
        while self._files and (len(self._files) > self.max_files or self._bytes > self.max_bytes):
            old, size = self._files.popleft()
            self._bytes -= size
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("evidence_removal_failed path=%s error=%s", old, exc)
