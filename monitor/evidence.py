"""Side-by-side evidence images (input | reconstruction | error heat map | overlay) and their retention."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from monitor.files import atomic_write, safe_name
from monitor.records import Region, local_time

log = logging.getLogger(__name__)

PANEL_MIN_SIDE = 192  # small model inputs are upscaled so a person can see the defect
# Tiled bundles stitch the whole image back: a 5 MP panel x 4 would be a 20 MP PNG per anomaly. Larger panels
# are shrunk by a whole factor to at most this side; the heat map by block maximum, so a defect of a few
# pixels stays a hot spot instead of being averaged into its surroundings.
PANEL_MAX_SIDE = 1024
HEADER_HEIGHT = 62
GAP = 4  # white columns between panels
# The hottest region's box (BGR): pure green appears neither in a gray part nor in the inferno colour map.
BOX_COLOUR = (0, 255, 0)
ROI_COLOUR = (0, 215, 255)  # the ROI on a camera's whole frame: amber, unlike the region's box
OVERLAY_ALPHA = 0.7  # the heat map's weight over the input where the error is at its maximum


def _to_bgr_u8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    u8 = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR) if u8.ndim == 2 else u8


def _scaled(error_map: np.ndarray) -> np.ndarray:
    """The error map over its maximum, in [0, 1]."""
    error_map = np.asarray(error_map, dtype=np.float32)
    top = float(error_map.max())
    return np.clip(error_map / top if top > 0 else error_map, 0, 1)


def _heat_map(error_map: np.ndarray) -> np.ndarray:
    return cv2.applyColorMap((_scaled(error_map) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)


def _overlay(input_bgr: np.ndarray, error_map: np.ndarray) -> np.ndarray:
    """The heat map blended over the input, more where the error is higher: cold parts show the part itself."""
    alpha = (_scaled(error_map) * OVERLAY_ALPHA)[:, :, None]
    blend = input_bgr.astype(np.float32) * (1 - alpha) + _heat_map(error_map).astype(np.float32) * alpha
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def _block_max(error_map: np.ndarray, factor: int) -> np.ndarray:
    """The maximum of each factor x factor block (edges padded by repetition): HxW -> ceil(H/f) x ceil(W/f)."""
    h, w = error_map.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(error_map, ((0, ph), (0, pw)), mode="edge")
    return padded.reshape((h + ph) // factor, factor, (w + pw) // factor, factor).max(axis=(1, 3))


def _panels(input_image: np.ndarray, reconstruction: np.ndarray,
            error_map: np.ndarray) -> tuple[list[np.ndarray], float]:
    """The four panels at one display size (small ones upscaled, ones beyond PANEL_MAX_SIDE shrunk), and
    the display scale: panel pixels per map pixel."""
    error_map = np.asarray(error_map, dtype=np.float32)
    h, w = error_map.shape[:2]
    if max(h, w) > PANEL_MAX_SIDE:
        factor = int(np.ceil(max(h, w) / PANEL_MAX_SIDE))
        size = (-(-w // factor), -(-h // factor))
        inp, rec = (cv2.resize(_to_bgr_u8(p), size, interpolation=cv2.INTER_AREA)
                    for p in (input_image, reconstruction))
        shrunk = _block_max(error_map, factor)
        return [inp, rec, _heat_map(shrunk), _overlay(inp, shrunk)], 1 / factor
    inp = _to_bgr_u8(input_image)
    panels = [inp, _to_bgr_u8(reconstruction), _heat_map(error_map), _overlay(inp, error_map)]
    factor = max(1, int(np.ceil(PANEL_MIN_SIDE / max(1, min(h, w)))))
    factor = max(1, min(factor, PANEL_MAX_SIDE // max(h, w)))  # a thin strip must not grow past the cap
    size = (w * factor, h * factor)
    return [cv2.resize(p, size, interpolation=cv2.INTER_NEAREST) for p in panels], float(factor)


def draw_box(panel: np.ndarray, box: Region, scale: float, colour: tuple[int, int, int] = BOX_COLOUR) -> None:
    """Draw `box` (map pixels) on `panel` (scale panel pixels per map pixel) as a 2-px frame just outside it.

    Outside, so the frame hides none of the defect it points at; pulled inside the panel where the box
    touches its edge.
    """
    h, w = panel.shape[:2]
    x0 = int(np.floor(box.x * scale))
    y0 = int(np.floor(box.y * scale))
    x1 = max(x0 + 1, int(np.ceil((box.x + box.w) * scale)))  # exclusive
    y1 = max(y0 + 1, int(np.ceil((box.y + box.h) * scale)))
    for grow in (1, 2):
        left, top = min(max(x0 - grow, 0), w - 1), min(max(y0 - grow, 0), h - 1)
        right, bottom = max(min(x1 - 1 + grow, w - 1), 0), max(min(y1 - 1 + grow, h - 1), 0)
        cv2.rectangle(panel, (left, top), (right, bottom), colour, 1, cv2.LINE_8)


def _frame_panel(frame: np.ndarray, roi: tuple[int, int, int, int], height: int,
                 box: Region | None) -> np.ndarray:
    """A camera's whole frame at the row's height, its ROI framed, and the region's box (frame pixels)."""
    image = np.asarray(frame)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    fh, fw = image.shape[:2]
    scale = height / fh
    width = max(1, min(int(round(fw * scale)), 2 * PANEL_MAX_SIDE))
    panel = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x, y, w, h = roi
    draw_box(panel, Region(x, y, min(w, fw - x), min(h, fh - y)), width / fw, ROI_COLOUR)
    if box is not None:
        draw_box(panel, box, width / fw)
    return panel


def render_evidence(
    input_image: np.ndarray,
    reconstruction: np.ndarray,
    error_map: np.ndarray,
    score: float,
    threshold: float,
    title: str = "",
    box: Region | None = None,
    region: Region | None = None,
    frame_time: float | None = None,
    time_label: str = "time",
    full_frame: np.ndarray | None = None,
    roi: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Compose input | reconstruction | error heat map | overlay (inputs in [0, 1]) under a header; BGR uint8.

    `box`: the hottest region in map pixels, framed on the input and the overlay; `region`: the same in the
    original image's pixels, written in the header. `frame_time` is written as local time with its UTC offset,
    after `time_label`. A camera with an ROI may pass its `full_frame`: it leads the row, the ROI framed.
    Any size: a stitched whole image from a tiled bundle is shrunk to panels of at most PANEL_MAX_SIDE.
    """
    row, scale = _panels(input_image, reconstruction, error_map)
    if box is not None:
        draw_box(row[0], box, scale)
        draw_box(row[3], box, scale)
    legend = "input | reconstruction | error | overlay"
    if full_frame is not None and roi is not None:
        # `region` is in whole-frame pixels already (the ROI's offset added).
        row.insert(0, _frame_panel(full_frame, roi, row[0].shape[0], region))
        legend = "frame (ROI) | " + legend
    gap = np.full((row[0].shape[0], GAP, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for panel in row:
        parts.extend([panel, gap])
    body = np.hstack(parts[:-1])
    verdict = "ANOMALY" if score > threshold else "normal"
    colour = (60, 60, 255) if score > threshold else (120, 220, 120)
    where = f"  at {region.describe()}" if region is not None else ""
    when = f"{time_label} {local_time(frame_time)}   " if frame_time is not None else ""
    lines = [(f"{verdict}  score {score:.6g}  threshold {threshold:.6g}{where}", 18, 0.5, colour),
             (title, 37, 0.42, (230, 230, 230)), (f"{when}{legend}", 56, 0.42, (230, 230, 230))]
    font = cv2.FONT_HERSHEY_SIMPLEX
    # A thin strip (a line-scan camera's, a narrow part) makes a narrow row: the caption, which says what was
    # judged and where, is never cut to fit it; the row is padded to the caption's width instead.
    text_width = max(cv2.getTextSize(text, font, size, 1)[0][0] for text, _, size, _ in lines) + 12
    if body.shape[1] < text_width:
        body = np.hstack([body, np.full((body.shape[0], text_width - body.shape[1], 3), 255, np.uint8)])
    header = np.full((HEADER_HEIGHT, body.shape[1], 3), 32, np.uint8)
    for text, y, size, ink in lines:
        cv2.putText(header, text, (6, y), font, size, ink, 1, cv2.LINE_AA)
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
            try:
                atomic_write(path, buf.tobytes())
            except FileNotFoundError:
                if self.folder.is_dir():
                    raise
                # The folder was removed under us (a clean-up of var/evidence): every file it held is gone, so
                # is their count; without the folder no evidence would ever be written again until a restart.
                self.folder.mkdir(parents=True, exist_ok=True)
                self._files.clear()
                self._bytes = 0
                log.warning("evidence_folder_recreated folder=%s", self.folder)
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
