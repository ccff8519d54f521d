"""Kept originals: which inputs are kept, byte for byte or as the whole camera frame, where, and for how long."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from imagegen import encode, normal_image

from monitor import metrics
from monitor import originals as originals_module
from monitor.config import ConfigError, load_config, parse_config
from monitor.originals import OriginalStore
from monitor.outputs import OutputGuard
from monitor.records import Frame, new_verdict_id
from monitor.retention import prune_tree


def config_of(tmp_path: Path, originals: dict | None = None, **source_keys) -> object:
    data = {"sources": [{"name": "line1", "folder": "in", **source_keys}, {"name": "line2", "folder": "in2"}]}
    if originals is not None:
        data["originals"] = originals
    return parse_config(data, tmp_path / "config.yaml")


def file_frame(tmp_path: Path, source: str = "line1", name: str = "part.PNG") -> Frame:
    image = normal_image(np.random.default_rng(1), 32)
    data = encode(image)
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Frame(source=source, image=image, frame_time=time.time(), path=path, data=data)


def store_of(tmp_path: Path, config, seed: int = 0) -> tuple[OriginalStore, OutputGuard]:  # noqa: ANN001
    guard = OutputGuard()
    return OriginalStore(tmp_path / "originals", config, guard, rng=random.Random(seed)), guard


def test_an_anomaly_keeps_the_file_byte_for_byte_named_by_its_verdict(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path))
    frame = file_frame(tmp_path)
    vid = new_verdict_id()
    kept = store.keep(frame, vid, anomaly=True)
    day = time.strftime("%Y-%m-%d", time.localtime(frame.frame_time))
    assert kept == tmp_path / "originals" / "line1" / day / f"{vid}.png"
    assert kept.read_bytes() == frame.data


def test_the_kept_bytes_are_those_scored_even_when_the_file_was_overwritten_since(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path))
    frame = file_frame(tmp_path)
    frame.path.write_bytes(b"a newer version")
    assert store.keep(frame, new_verdict_id(), anomaly=True).read_bytes() == frame.data


def test_anomalies_false_keeps_no_anomaly(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path, {"anomalies": False}))
    assert store.keep(file_frame(tmp_path), new_verdict_id(), anomaly=True) is None
    assert not (tmp_path / "originals").exists()


def test_normal_inputs_are_not_kept_by_default(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path))
    assert all(store.keep(file_frame(tmp_path), new_verdict_id(), anomaly=False) is None for _ in range(20))


def test_normal_inputs_are_sampled_at_the_configured_rate(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path, {"normal_rate": 0.25}), seed=7)
    draws = [store.wants("line1", anomaly=False) for _ in range(4000)]
    # 4000 draws at p = 0.25: the standard deviation of the count is about 27, so +-150 is over 5 sigma.
    assert abs(sum(draws) - 1000) < 150


def test_a_source_rate_wins_over_the_config_rate(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path, {"normal_rate": 0.0}, keep_normal_rate=1.0))
    assert store.keep(file_frame(tmp_path, "line1"), new_verdict_id(), anomaly=False) is not None
    assert store.keep(file_frame(tmp_path, "line2"), new_verdict_id(), anomaly=False) is None


def test_a_reload_applies_new_rates(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path))
    assert not store.wants("line1", anomaly=False)
    store.configure(config_of(tmp_path, {"normal_rate": 1.0}))
    assert store.wants("line1", anomaly=False)


def test_a_camera_frame_is_kept_as_a_lossless_png_of_the_roi_the_model_scored(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path))
    whole = np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    crop = whole[8:24, 8:40].copy()
    frame = Frame(source="line1", image=crop, frame_time=time.time(), full_frame=whole)
    kept = store.keep(frame, new_verdict_id(), anomaly=True)
    assert kept.suffix == ".png"
    np.testing.assert_array_equal(cv2.imread(str(kept), cv2.IMREAD_UNCHANGED), crop)


def test_a_refused_write_costs_the_copy_and_is_reported_then_recovers(tmp_path):
    store, guard = store_of(tmp_path, config_of(tmp_path))
    (tmp_path / "originals").write_text("a file where the folder must be")  # every write now fails
    before = metrics.OUTPUT_ERRORS.labels("originals", "ENOTDIR")._value.get()
    assert store.keep(file_frame(tmp_path), new_verdict_id(), anomaly=True) is None
    assert guard.blocked() == ["originals"]
    assert metrics.OUTPUT_ERRORS.labels("originals", "ENOTDIR")._value.get() == before + 1
    (tmp_path / "originals").unlink()
    assert store.keep(file_frame(tmp_path), new_verdict_id(), anomaly=True) is not None
    assert guard.blocked() == []


def test_a_folder_retention_removes_between_mkdir_and_write_is_made_again(tmp_path, monkeypatch):
    # The race a real retention thread wins only by chance: the fresh, still empty day folder goes just before
    # the write. Staged here by removing it in the write's first call.
    store, guard = store_of(tmp_path, config_of(tmp_path))
    real_write, calls = originals_module.atomic_write, []

    def write_after_retention(path, data):  # noqa: ANN001, ANN202
        calls.append(path)
        if len(calls) == 1:
            os.rmdir(path.parent)
        return real_write(path, data)

    monkeypatch.setattr(originals_module, "atomic_write", write_after_retention)
    kept = store.keep(file_frame(tmp_path), new_verdict_id(), anomaly=True)
    assert kept is not None and kept.is_file() and len(calls) == 2
    assert guard.blocked() == []


def test_retention_removes_the_old_copies_then_the_oldest_beyond_the_byte_limit(tmp_path):
    store, _ = store_of(tmp_path, config_of(tmp_path, {"max_age_days": 1, "max_bytes": 2500}))
    now = time.time()
    kept = []
    for age_days in (3, 0.5, 0.4, 0.3, 0.2):
        path = store.keep(file_frame(tmp_path), new_verdict_id(), anomaly=True)
        os.utime(path, (now - age_days * 86_400,) * 2)
        kept.append(path)
    size = kept[0].stat().st_size
    assert 2500 // size < 4, "the test needs the byte limit to hold fewer than the four recent files"
    removed_age, removed_bytes = store.prune()
    assert removed_age == 1 and not kept[0].exists()
    assert removed_bytes == 4 - 2500 // size
    survivors = [p for p in kept if p.exists()]
    assert survivors == kept[len(kept) - len(survivors):]  # the newest stay
    assert metrics.ORIGINALS_BYTES._value.get() == sum(p.stat().st_size for p in survivors)


def test_retention_removes_emptied_day_folders_but_not_the_root(tmp_path):
    root = tmp_path / "tree"
    old = root / "line1" / "2020-01-01" / "x.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x")
    os.utime(old, (0, 0))
    pruned = prune_tree(root, max_age_s=86_400, max_bytes=None)
    assert pruned.removed_age == 1 and pruned.files == 0
    assert root.is_dir() and list(root.iterdir()) == []


def test_the_originals_folder_inside_a_watched_folder_is_a_config_error_naming_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("sources: [{name: a, folder: in}]\noutput: {originals: in/kept}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: output.originals: .* inside the folder .* 'a' watches"):
        load_config(path)


@pytest.mark.parametrize(("folder", "output", "inside"), [
    ("data/in", "{originals: data}", "the folder source 'a' watches"),
    ("in", "{originals: data, journal: data/journal.jsonl}", "output.journal"),
    ("in", "{originals: data, evidence: data/evidence}", "output.evidence"),
])
def test_an_originals_folder_holding_a_watched_folder_or_another_output_is_a_config_error(tmp_path, folder, output,
                                                                                        inside):
    # Retention prunes the originals tree by age and size: whatever else lies inside it would be deleted.
    path = tmp_path / "config.yaml"
    path.write_text(f"sources: [{{name: a, folder: {folder}}}]\noutput: {output}\n")
    with pytest.raises(ConfigError, match=rf"config.yaml: output.originals: .* \({inside}\) lies inside"):
        load_config(path)


def test_a_rate_beyond_one_is_a_config_error_naming_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("sources: [{name: a, folder: in, keep_normal_rate: 2}]\n")
    with pytest.raises(ConfigError, match=r"sources\[0\].*keep_normal_rate"):
        load_config(path)
