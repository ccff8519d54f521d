"""A model per source: `models:` by name, routing, verdicts naming their model, check-config's new checks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from daemon_proc import DaemonProcess, free_port, wait_until
from reload_util import bundle_variant, drop_one, metric, scrape

from monitor.batching import FrameQueue
from monitor.config import ConfigError, check_inputs, load_config
from monitor.records import Frame, Verdict

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "default"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# --- config ------------------------------------------------------------------------------------
def test_model_alone_is_the_model_called_default(tmp_path):
    config = load_config(write(tmp_path, "model: m\nsources: [{name: a, folder: in}]\n"))
    assert config.models == {"default": tmp_path / "m"}
    assert config.sources[0].model == "default"


def test_models_by_name_resolve_against_the_config_file(tmp_path):
    config = load_config(write(tmp_path, "models: {default: m1, b: /abs/m2}\n"
                                         "sources: [{name: a, folder: in}, {name: c, camera: 0, model: b}]\n"))
    assert config.models == {"default": tmp_path / "m1", "b": Path("/abs/m2")}
    assert [s.model for s in config.sources] == ["default", "b"]


def test_model_and_models_together_are_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config.yaml: models: set either 'model'"):
        load_config(write(tmp_path, "model: m\nmodels: {a: m}\nsources: [{name: a, folder: in}]\n"))


def test_an_unknown_model_name_is_an_error_naming_the_key_and_the_known_ones(tmp_path):
    path = write(tmp_path, "models: {default: m, a: n}\nsources: [{name: s0, folder: in}, "
                           "{name: s1, folder: in2, model: x}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: sources[1].model: unknown model 'x' (known: a, default)"


def test_a_source_without_model_needs_a_model_called_default(tmp_path):
    with pytest.raises(ConfigError, match=r"sources\[0\]\.model: unknown model 'default' \(known: a\)"):
        load_config(write(tmp_path, "models: {a: m}\nsources: [{name: s0, folder: in}]\n"))


def test_a_source_with_both_folder_and_camera_is_an_error_naming_the_source(tmp_path):
    with pytest.raises(ConfigError, match=r"sources\[1\]: source 'cam' has both 'folder' and 'camera'"):
        load_config(write(tmp_path, "sources: [{name: a, folder: in}, {name: cam, folder: x, camera: 0}]\n"))


def test_two_sources_watching_the_same_folder_are_an_error(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match=r"sources\[1\]\.folder: source 'b' watches the same folder as 'a'"):
        load_config(write(tmp_path, "sources: [{name: a, folder: real}, {name: b, folder: link}]\n"))


def test_a_folder_inside_another_sources_recursive_folder_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"sources\[1\]\.folder: source 'b' watches .*inside the folder"):
        load_config(write(tmp_path, "sources: [{name: a, folder: in}, {name: b, folder: in/sub}]\n"))
    with pytest.raises(ConfigError, match=r"sources\[1\]\.folder: source 'a' watches .*inside the folder"):
        load_config(write(tmp_path, "sources: [{name: a, folder: in/sub}, {name: b, folder: in}]\n"))
    # Not recursive: the outer source never reads the inner folder.
    load_config(write(tmp_path, "sources: [{name: a, folder: in, recursive: false}, {name: b, folder: in/sub}]\n"))


def test_check_inputs_refuses_a_missing_bundle_naming_its_key(tmp_path):
    path = write(tmp_path, f"models: {{default: {SHIPPED}, b: nope}}\nsources: [{{name: a, folder: in}}]\n")
    with pytest.raises(ConfigError, match=r"models\.b: .*nope: model bundle folder does not exist"):
        check_inputs(load_config(path), path)


def test_check_inputs_refuses_an_invalid_sidecar(tmp_path):
    bad = bundle_variant(SHIPPED, tmp_path / "bad")
    (bad / "bundle.json").write_text('{"format": "anomaly-monitor-bundle", "format_version": 1}')
    path = write(tmp_path, f"model: {bad}\nsources: [{{name: a, folder: in}}]\n")
    with pytest.raises(ConfigError, match=r"config.yaml: model: .*bad/bundle.json: "):
        check_inputs(load_config(path), path)


def test_check_inputs_refuses_a_missing_video_file(tmp_path):
    path = write(tmp_path, f"model: {SHIPPED}\nsources: [{{name: a, camera: clips/gone.avi}}]\n")
    with pytest.raises(ConfigError, match=r"sources\[0\]\.camera: video file .*gone.avi: no such file"):
        check_inputs(load_config(path), path)


def test_check_config_command_refuses_what_run_would(tmp_path):
    path = write(tmp_path, f"models: {{default: {SHIPPED}, b: nope}}\nsources: [{{name: a, folder: in}}]\n")
    res = subprocess.run([sys.executable, "-m", "monitor", "check-config", str(path)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert res.returncode == 2
    assert f"{path}: models.b:" in res.stderr
    assert "oneDNN" not in res.stderr and "I0000" not in res.stderr  # TensorFlow's start-up noise is silenced


# --- records and queue -------------------------------------------------------------------------
def test_a_verdict_records_the_model_that_scored_it():
    record = Verdict(source="a", frame_time=1.0, scored_at=2.0, score=0.1, threshold=0.2, anomaly=False,
                     model="b", model_id="0123456789ab").to_json()
    assert record["model"] == "b" and record["model_id"] == "0123456789ab"


def test_discard_drops_the_queued_frames_of_the_given_sources_only():
    queue = FrameQueue(10)
    image = np.zeros((4, 4), np.uint8)
    for source in ("a", "b", "a"):
        queue.put(Frame(source, image, 0.0, path=Path(f"/x/{source}")))
    queue.put_latest(Frame("cam", image, 0.0))
    assert queue.discard({"a", "cam"}) == {"a": 2, "cam": 1}
    assert [f.source for f in queue.collect(10, 0)] == ["b"]


def test_bundle_identity_follows_the_content_not_the_folder(tmp_path):
    from monitor.model.bundle import bundle_identity

    same = bundle_variant(SHIPPED, tmp_path / "same")
    (same / "bundle.json").write_bytes((SHIPPED / "bundle.json").read_bytes())
    other = bundle_variant(SHIPPED, tmp_path / "other")
    assert bundle_identity(same) == bundle_identity(SHIPPED)
    assert bundle_identity(other) != bundle_identity(SHIPPED)
    assert len(bundle_identity(SHIPPED)) == 12


# --- the daemon ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_sources_with_two_models_in_one_daemon(tmp_path, tiny_bundle, subprocess_env):
    b = bundle_variant(tiny_bundle, tmp_path / "bundle-b", margin=2.0)
    port = free_port()
    config = {
        "models": {"default": str(tiny_bundle), "wide": str(b)},
        "sources": [{"name": "a", "folder": "in_a", "settle_ms": 20},
                    {"name": "b", "folder": "in_b", "settle_ms": 20, "model": "wide"}],
        "metrics": {"host": "127.0.0.1", "port": port},
        "logging": {"summary_interval_s": 1},
    }
    proc = DaemonProcess(tmp_path / "d", config, subprocess_env).start()
    try:
        for i in range(3):
            drop_one(proc.workdir / "in_a", f"a{i}_", seed=i)
            drop_one(proc.workdir / "in_b", f"b{i}_", seed=i)
        verdicts = proc.wait_for_verdicts(6)
        by_source = {s: [v for v in verdicts if v["source"] == s] for s in ("a", "b")}
        assert {v["model"] for v in by_source["a"]} == {"default"}
        assert {v["model"] for v in by_source["b"]} == {"wide"}
        ids = {v["model_id"] for v in verdicts}
        assert len(ids) == 2
        # Same images, same network: each source judged by its own model's calibrated threshold.
        assert min(v["threshold"] for v in by_source["b"]) > 1.5 * max(v["threshold"] for v in by_source["a"])
        # Counted just after the journal's fsync: wait for the counts rather than race the scorer to them.
        def counted() -> str | None:
            text = scrape(port)
            try:
                done = all(metric(text, "anomaly_monitor_model_images_scored_total", model=m) == 3
                           for m in ("default", "wide"))
            except KeyError:
                return None
            return text if done else None

        text = wait_until(counted, 10)
        assert metric(text, "anomaly_monitor_threshold_ratio", source="a") == pytest.approx(1.0, rel=0.5)
        (build,) = [line for line in text.splitlines() if line.startswith("anomaly_monitor_build_info{")]
        assert 'tensorflow="2.' in build and 'version="' in build and build.endswith(" 1.0")
        # One summary line per source per interval, with what it scored since the last one.
        wait_until(lambda: re.search(r"source_summary source=b scored=[1-3] anomalies=\d+ threshold=[0-9.e-]+ "
                                     r"rate_per_s=", proc.log()), 10)
        assert proc.terminate() == 0
    finally:
        proc.kill()
