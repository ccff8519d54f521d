"""Evidence images: three panels with the score written on them; retention by count and bytes."""

import errno
import os
import time

import cv2
import numpy as np
import pytest

from monitor.evidence import HEADER_HEIGHT, EvidenceStore, render_evidence


def sample(size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    inp = rng.random((size, size, 1), dtype=np.float32)
    rec = np.full_like(inp, 0.5)
    err = np.zeros((size, size), np.float32)
    err[4:8, 20:28] = 1.0
    return inp, rec, err


def test_evidence_has_input_reconstruction_and_heat_map_side_by_side():
    inp, rec, err = sample()
    image = render_evidence(inp, rec, err, score=0.2, threshold=0.1, title="line1 a.png")
    assert image.dtype == np.uint8 and image.shape[2] == 3
    panel = (image.shape[1] - 8) // 3
    assert panel >= 192 and image.shape[0] == HEADER_HEIGHT + panel
    heat = image[HEADER_HEIGHT:, 2 * (panel + 4):]
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
    assert image.shape[:2] == (HEADER_HEIGHT + 750, 3 * 1000 + 8)  # 2000 px shrunk by 2


def test_a_4px_defect_stays_a_hot_spot_in_a_shrunk_heat_map():
    err = np.zeros((1944, 2592), np.float32)
    err[1000:1004, 2000:2004] = 1.0  # 16 px of 5 MP; shrunk by 3, an average would dim it to a ninth or less
    image = render_evidence(np.zeros((1944, 2592, 1), np.float32), np.zeros((1944, 2592, 1), np.float32), err,
                            0.2, 0.1)
    panel = (image.shape[1] - 8) // 3
    heat = image[HEADER_HEIGHT:, 2 * (panel + 4):]
    hottest = cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0]
    y, x = 1000 // 3, 2000 // 3
    np.testing.assert_array_equal(heat[y, x], hottest)


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
