"""Evidence images: four panels (input with the region's box, reconstruction, heat map, overlay) under a
header with the score, the time and the region; retention by count and bytes."""

import errno
import math
import os
import shutil
import time

import cv2
import numpy as np
import pytest

from monitor.evidence import BOX_COLOUR, GAP, HEADER_HEIGHT, ROI_COLOUR, EvidenceStore, render_evidence
from monitor.records import Region


def sample(size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    inp = rng.random((size, size, 1), dtype=np.float32)
    rec = np.full_like(inp, 0.5)
    err = np.zeros((size, size), np.float32)
    err[4:8, 20:28] = 1.0
    return inp, rec, err


def panels(image: np.ndarray, n: int = 4) -> list[np.ndarray]:
    """The n panels of an evidence image's body, left to right."""
    width = (image.shape[1] - (n - 1) * GAP) // n
    body = image[HEADER_HEIGHT:]
    return [body[:, k * (width + GAP):k * (width + GAP) + width] for k in range(n)]


def test_evidence_has_input_reconstruction_heat_map_and_overlay_side_by_side():
    inp, rec, err = sample()
    image = render_evidence(inp, rec, err, score=0.2, threshold=0.1, title="line1 a.png")
    assert image.dtype == np.uint8 and image.shape[2] == 3
    panel = (image.shape[1] - 3 * GAP) // 4
    assert panel >= 192 and image.shape[0] == HEADER_HEIGHT + panel
    heat = panels(image)[2]
    scale = panel // 32
    # The heat map is brightest exactly where the error is.
    hot = heat[4 * scale:8 * scale, 20 * scale:28 * scale].mean()
    cold = heat[16 * scale:, :16 * scale].mean()
    assert hot > cold + 100


def test_evidence_header_differs_for_anomaly_and_normal():
    inp, rec, err = sample()
    anomaly = render_evidence(inp, rec, err, score=0.2, threshold=0.1)
    normal = render_evidence(inp, rec, err, score=0.05, threshold=0.1)
    # Red text for an anomaly, green for normal (BGR).
    assert anomaly[:HEADER_HEIGHT, :, 2].max() > anomaly[:HEADER_HEIGHT, :, 1].max() - 10
    assert not np.array_equal(anomaly[:HEADER_HEIGHT], normal[:HEADER_HEIGHT])


def test_colour_inputs_are_rendered_in_colour():
    rng = np.random.default_rng(1)
    inp = rng.random((16, 16, 3), dtype=np.float32)
    image = render_evidence(inp, inp, np.zeros((16, 16), np.float32), 0.0, 1.0)
    body = image[HEADER_HEIGHT:, :192]
    assert not np.array_equal(body[:, :, 0], body[:, :, 2])


def test_a_large_stitched_image_is_shrunk_to_panels_of_at_most_1024_pixels():
    inp = np.full((1500, 2000, 1), 0.5, np.float32)
    image = render_evidence(inp, inp, np.zeros((1500, 2000), np.float32), 0.2, 0.1)
    assert image.shape[:2] == (HEADER_HEIGHT + 750, 4 * 1000 + 3 * GAP)  # 2000 px shrunk by 2


def test_a_thin_strip_keeps_its_caption_whole_and_its_panels_in_place():
    inp = np.full((400, 5, 1), 0.5, np.float32)  # a line-scan strip: 4 panels of 10 px would cut the caption
    err = np.zeros((400, 5), np.float32)
    err[200:210, 2] = 1.0
    image = render_evidence(inp, inp, err, 12.5, 4.9, title="line1 strip_0001.png", frame_time=1.8e9)
    header = image[:HEADER_HEIGHT]
    assert (header[:, -4:] == 32).all()  # the text ends before the right edge: nothing cut off
    ink = np.nonzero((header != 32).any(axis=(0, 2)))[0]
    assert ink.max() > 150  # the caption runs on past the strip's panels
    heat = panels(image[:, :4 * 10 + 3 * GAP])[2]  # the panels keep their place and size at the left
    assert heat[400:420].mean() > heat[:100].mean() + 20


def test_a_4px_defect_stays_a_hot_spot_in_a_shrunk_heat_map():
    err = np.zeros((1944, 2592), np.float32)
    err[1000:1004, 2000:2004] = 1.0  # 16 px of 5 MP; shrunk by 3, an average would dim it to a ninth or less
    image = render_evidence(np.zeros((1944, 2592, 1), np.float32), np.zeros((1944, 2592, 1), np.float32), err,
                            0.2, 0.1)
    heat = panels(image)[2]
    hottest = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0]
    y, x = 1000 // 3, 2000 // 3
    np.testing.assert_array_equal(heat[y, x], hottest)


def test_the_region_box_is_drawn_just_outside_the_region_on_the_input_and_the_overlay():
    inp, rec, err = sample()  # the error is at rows 4:8, columns 20:28 of a 32x32 map
    image = render_evidence(inp, rec, err, 0.2, 0.1, box=Region(20, 4, 8, 4), region=Region(80, 16, 32, 16))
    scale = panels(image)[0].shape[1] // 32
    for panel in (panels(image)[0], panels(image)[3]):
        top, left = 4 * scale - 1, 20 * scale - 1  # one pixel outside the box's top-left corner
        right, bottom = 28 * scale, 8 * scale  # one pixel outside its bottom-right corner
        for y, x in ((top, left), (top, 24 * scale), (bottom, right), (6 * scale, right), (6 * scale, left)):
            np.testing.assert_array_equal(panel[y, x], BOX_COLOUR)
        assert not (panel[4 * scale:8 * scale, 20 * scale:28 * scale] == BOX_COLOUR).all(axis=2).any()
    # Neither the reconstruction nor the heat map is drawn on.
    for panel in panels(image)[1:3]:
        assert not (panel == BOX_COLOUR).all(axis=2).any()


def test_without_a_box_nothing_is_drawn():
    inp, rec, err = sample()
    image = render_evidence(inp, rec, err, 0.2, 0.1)
    assert not (image[HEADER_HEIGHT:] == BOX_COLOUR).all(axis=2).any()


def test_the_overlay_shows_the_heat_map_over_the_input_where_the_error_is():
    inp, rec, err = sample()
    first, _, heat, overlay = panels(render_evidence(inp, rec, err, 0.2, 0.1))
    scale = first.shape[1] // 32
    hot = (slice(5 * scale, 7 * scale), slice(22 * scale, 26 * scale))
    cold = (slice(16 * scale, 32 * scale), slice(0, 16 * scale))
    # Where the error is zero the overlay is the input; where it peaks it is mostly the heat map's colour.
    np.testing.assert_array_equal(overlay[cold], first[cold])
    assert np.abs(overlay[hot].astype(int) - heat[hot]).mean() < np.abs(first[hot].astype(int) - heat[hot]).mean()


def test_the_header_names_the_region_and_the_time():
    inp, rec, err = sample()
    plain = render_evidence(inp, rec, err, 0.2, 0.1, title="line1 a.png")
    told = render_evidence(inp, rec, err, 0.2, 0.1, title="line1 a.png", region=Region(80, 16, 32, 16),
                           frame_time=1_700_000_000.0, time_label="arrived")
    assert not np.array_equal(plain[:HEADER_HEIGHT], told[:HEADER_HEIGHT])
    np.testing.assert_array_equal(plain[HEADER_HEIGHT:], told[HEADER_HEIGHT:])


def test_a_camera_with_an_roi_shows_its_whole_frame_with_the_roi_framed_first():
    inp, rec, err = sample()
    frame = np.full((120, 160, 3), 90, np.uint8)  # the whole camera frame; the ROI is x 40..104, y 20..84
    image = render_evidence(inp, rec, err, 0.2, 0.1, box=Region(20, 4, 8, 4), region=Region(80, 28, 16, 8),
                            full_frame=frame, roi=(40, 20, 64, 64))
    row = image[HEADER_HEIGHT:]
    height = row.shape[0]
    width = round(160 * height / 120)
    whole = row[:, :width]
    s = height / 120
    # One pixel above the ROI's top edge (y 20), one below the region's bottom edge (y 28 + 8), in frame pixels.
    np.testing.assert_array_equal(whole[math.floor(20 * s) - 1, round(60 * s)], ROI_COLOUR)
    np.testing.assert_array_equal(whole[math.ceil(36 * s), round(88 * s)], BOX_COLOUR)
    np.testing.assert_array_equal(row[:, width:width + GAP], 255)  # then the four panels as usual
    assert image.shape[1] == width + GAP + 4 * height + 3 * GAP


def test_store_writes_png_named_by_time_source_and_input(tmp_path):
    store = EvidenceStore(tmp_path, max_files=10)
    path = store.save(np.zeros((8, 8, 3), np.uint8), "line 1", time.time(), "part/../x 7")
    assert path.parent == tmp_path and path.suffix == ".png"
    assert "line_1" in path.name and "/" not in path.name.replace(str(tmp_path), "")
    assert cv2.imread(str(path)) is not None


def test_store_keeps_at_most_max_files_removing_the_oldest(tmp_path):
    store = EvidenceStore(tmp_path, max_files=3)
    paths = [store.save(np.full((8, 8, 3), i, np.uint8), "s", 1000.0 + i, f"f{i}") for i in range(5)]
    assert sorted(tmp_path.glob("*.png")) == sorted(paths[2:])


def test_store_keeps_under_max_bytes(tmp_path):
    noise = np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8)
    size = len(cv2.imencode(".png", noise)[1])
    store = EvidenceStore(tmp_path, max_files=100, max_bytes=int(size * 2.5))
    for i in range(6):
        store.save(noise, "s", 1000.0 + i, f"n{i}")
    assert len(list(tmp_path.glob("*.png"))) == 2
    assert sum(p.stat().st_size for p in tmp_path.glob("*.png")) <= size * 2.5


def test_store_applies_retention_to_files_left_by_an_earlier_run(tmp_path):
    first = EvidenceStore(tmp_path, max_files=10)
    for i in range(6):
        first.save(np.zeros((8, 8, 3), np.uint8), "s", 1000.0 + i, f"old{i}")
    EvidenceStore(tmp_path, max_files=2)
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_a_removed_evidence_folder_is_made_again_and_its_files_no_longer_count(tmp_path):
    store = EvidenceStore(tmp_path / "evidence", max_files=2)
    image = np.zeros((8, 8, 3), np.uint8)
    store.save(image, "line1", time.time(), "a")
    store.save(image, "line1", time.time(), "b")
    shutil.rmtree(tmp_path / "evidence")  # an operator's clean-up while the daemon runs
    c = store.save(image, "line1", time.time(), "c")
    d = store.save(image, "line1", time.time(), "d")
    assert c.exists() and d.exists()  # the two gone files do not count against max_files
    assert sorted(p.name for p in (tmp_path / "evidence").iterdir()) == sorted([c.name, d.name])


def test_a_refused_evidence_write_leaves_no_temporary_file_and_no_retention_entry(tmp_path, monkeypatch):
    from monitor import files

    store = EvidenceStore(tmp_path, max_files=10)

    def full_disk(fd, data):
        os.write(fd, bytes(data[:100]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_all", full_disk)
    inp, rec, err = sample()
    with pytest.raises(OSError):
        store.save(render_evidence(inp, rec, err, 0.2, 0.1), "line1", time.time(), "a")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    path = store.save(render_evidence(inp, rec, err, 0.2, 0.1), "line1", time.time(), "a")
    assert os.listdir(tmp_path) == [path.name]
