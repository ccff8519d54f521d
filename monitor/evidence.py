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
# Tiled bundles stitch the whole image back: a 5 MP panel x 3 would be a 15 MP PNG per anomaly. Larger panels
# are shrunk by a whole factor to at most this side; the heat map by block maximum, so a defect of a few
# pixels stays a hot spot instead of being averaged into its surroundings.
PANEL_MAX_SIDE = 1024
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


def _block_max(error_map: np.ndarray, factor: int) -> np.ndarray:
    """The maximum of each factor x factor block (edges padded by repetition): HxW -> ceil(H/f) x ceil(W/f)."""
    h, w = error_map.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(error_map, ((0, ph), (0, pw)), mode="edge")
    return padded.reshape((h + ph) // factor, factor, (w + pw) // factor, factor).max(axis=(1, 3))


def _panels(input_image: np.ndarray, reconstruction: np.ndarray, error_map: np.ndarray) -> list[np.ndarray]:
    """The three panels at one display size: small ones upscaled, ones beyond PANEL_MAX_SIDE shrunk."""
    error_map = np.asarray(error_map, dtype=np.float32)
    h, w = error_map.shape[:2]
    if max(h, w) > PANEL_MAX_SIDE:
        factor = int(np.ceil(max(h, w) / PANEL_MAX_SIDE))
        size = (-(-w // factor), -(-h // factor))
        shrink = [cv2.resize(_to_bgr_u8(p), size, interpolation=cv2.INTER_AREA)
                  for p in (input_image, reconstruction)]
        return [*shrink, _heat_map(_block_max(error_map, factor))]
    panels = [_to_bgr_u8(input_image), _to_bgr_u8(reconstruction), _heat_map(error_map)]
    factor = max(1, int(np.ceil(PANEL_MIN_SIDE / max(1, min(h, w)))))
    factor = max(1, min(factor, PANEL_MAX_SIDE // max(h, w)))  # a thin strip must not grow past the cap
    size = (w * factor, h * factor)
    return [cv2.resize(p, size, interpolation=cv2.INTER_NEAREST) for p in panels]


def render_evidence(
    input_image: np.ndarray,
    reconstruction: np.ndarray,
    error_map: np.ndarray,
    score: float,
    threshold: float,
    title: str = "",
) -> np.ndarray:
    """Compose input | reconstruction | error heat map (inputs in [0, 1]) with score text; BGR uint8.

    Any size: a stitched whole image from a tiled bundle is shrunk to panels of at most PANEL_MAX_SIDE.
    """
    row = _panels(input_image, reconstruction, error_map)
    gap = np.full((row[0].shape[0], 4, 3), 255, np.uint8)
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
