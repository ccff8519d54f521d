"""The daemon end to end: a real subprocess, files written by other processes, a real metrics scrape."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_proc import DaemonProcess, free_port, wait_until
from imagegen import anomalous_image, normal_image, write_images
from reload_util import metric as metric_value
from reload_util import scrape

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


def daemon_config(bundle: Path, **extra) -> dict:
    config = {
        "model": str(bundle),
        "sources": [{"name": "line1", "folder": "inbox", "settle_ms": 50, "stable_s": 0.5,
                     "incomplete_timeout_s": 2}],
        "batching": {"max_batch": 8, "max_wait_ms": 20},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "INFO"},
    }
    config.update(extra)
    return config




@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, list[Path]]:
    """Normal and anomalous 32x32 images, as files to copy in."""
    rng = np.random.default_rng(99)
    root = tmp_path_factory.mktemp("samples")
    return {
        "normal": write_images(root / "normal", [normal_image(rng) for _ in range(6)], prefix="good"),
        "anomaly": write_images(root / "anomaly", [anomalous_image(rng) for _ in range(3)], prefix="bad"),
        "big": write_images(root / "big", [cv2.resize(anomalous_image(rng), (512, 512))], prefix="bigbad"),
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_bundle, subprocess_env):
    proc = DaemonProcess(tmp_path_factory.mktemp("daemon"), daemon_config(tiny_bundle), subprocess_env)
    proc.start()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def delivered(daemon, samples):
    """Another process copies files in, two of them slowly in chunks; wait for every verdict."""
    inbox = daemon.workdir / "inbox"
    copier = subprocess.run(
        [sys.executable, "-c",
         "import shutil, sys\nfor src in sys.argv[2:]: shutil.copy(src, sys.argv[1])",
         str(inbox), *map(str, samples["normal"][:4] + samples["anomaly"][:2])],
        timeout=30,
    )
    assert copier.returncode == 0
    slow = [
        subprocess.Popen([sys.executable, str(HERE / "slow_writer.py"), str(src), str(inbox / src.name), "6",
                          "0.1"])
        for src in (samples["big"][0], samples["normal"][4])
    ]
    assert all(p.wait(30) == 0 for p in slow)
    return daemon.wait_for_verdicts(8)


def test_every_dropped_file_gets_exactly_one_verdict(delivered, daemon, samples):
    names = sorted(Path(v["path"]).name for v in delivered)
    expected = sorted(p.name for p in samples["normal"][:5] + samples["anomaly"][:2] + samples["big"])
    assert names == expected
    for v in delivered:
        assert v["source"] == "line1"
        assert set(v) >= {"time", "frame_time", "source", "path", "score", "threshold", "anomaly", "evidence"}


def test_the_daemon_log_carries_no_tensorflow_start_up_lines(daemon):
    # oneDNN notices, CUDA probing on a machine without a GPU ("failed call to cuInit: CUDA error"): noise in a
    # line PC's journal at every start, and the CUDA one reads like a fault.
    log = daemon.log()
    assert "daemon_started" in log
    assert "oneDNN" not in log and "cuInit" not in log and "absl::InitializeLog" not in log


def test_the_daemon_loads_neither_scikit_learn_nor_pandas_nor_matplotlib(daemon):
    # Keras imports all three whenever they are installed (as they are here): one and a half seconds of every
    # start for packages the daemon never calls. Their compiled modules would show in the process's maps.
    maps = Path(f"/proc/{daemon.proc.pid}/maps").read_text()
    assert "/tensorflow/" in maps  # the probe sees what the daemon did load
    assert "/sklearn/" not in maps and "/pandas/" not in maps and "/matplotlib/" not in maps


def test_anomalous_files_are_flagged_and_normal_ones_score_lower(delivered):
    bad = [v for v in delivered if Path(v["path"]).name.startswith("bad")]
    good = [v for v in delivered if Path(v["path"]).name.startswith("good")]
    assert all(v["anomaly"] for v in bad)
    assert max(v["score"] for v in good) < min(v["score"] for v in bad)


def test_a_slowly_written_large_file_is_scored_whole(delivered):
    (big,) = [v for v in delivered if Path(v["path"]).name.startswith("bigbad")]
    assert big["anomaly"] is True  # a half-read file would be an undecodable or different image


def test_each_anomaly_has_a_side_by_side_evidence_image(delivered):
    anomalies = [v for v in delivered if v["anomaly"]]
    assert anomalies
    for v in anomalies:
        image = cv2.imread(v["evidence"])
        assert image is not None
        assert image.shape[1] > 3 * image.shape[0] // 2  # four panels side by side
        region = v["region"]  # where on the part, in the file's pixels
        assert region["x"] + region["w"] <= 512 and region["y"] + region["h"] <= 512 and region["w"] > 0
    assert all(v["evidence"] is None and "region" not in v for v in delivered if not v["anomaly"])


def test_metrics_scrape_counts_what_the_journal_says(delivered, daemon):
    n_anomalies = sum(v["anomaly"] for v in delivered)

    def counted() -> str | None:
        # Counted just after the journal's fsync: wait for the count rather than race the scorer to it.
        text = scrape(daemon.config["metrics"]["port"])
        try:
            return text if metric_value(text, "anomaly_monitor_score_count", source="line1") == len(delivered) else None
        except KeyError:
            return None

    text = wait_until(counted, timeout=10)
    assert metric_value(text, "anomaly_monitor_images_scored_total", source="line1", outcome="anomaly") == (
        n_anomalies)
    assert metric_value(text, "anomaly_monitor_images_scored_total", source="line1", outcome="normal") == (
        len(delivered) - n_anomalies)
    assert metric_value(text, "anomaly_monitor_anomalies_total", source="line1") == n_anomalies
    assert metric_value(text, "anomaly_monitor_score_count", source="line1") == len(delivered)
    assert metric_value(text, "anomaly_monitor_end_to_end_seconds_count", source="line1") == len(delivered)
    assert metric_value(text, "anomaly_monitor_threshold", source="line1") > 0
    assert metric_value(text, "anomaly_monitor_inference_seconds_count", model="default") >= 1
    assert metric_value(text, "anomaly_monitor_queue_depth") == 0
    assert 'anomaly_monitor_model_info{' in text


def test_metrics_pass_promtool_lint(delivered, daemon):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/install-system-deps.sh"
    text = scrape(daemon.config["metrics"]["port"])
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == ""


def test_no_file_name_is_a_label_value(delivered, daemon):
    text = scrape(daemon.config["metrics"]["port"])
    for v in delivered:
        assert Path(v["path"]).name not in text


def test_prometheus_scrapes_the_daemon(delivered, daemon, tmp_path):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is installed by scripts/install-system-deps.sh"
    port = free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: monitor\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{daemon.config['metrics']['port']}']\n"
    )
    proc = subprocess.Popen(
        [prometheus, f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import json

        def query() -> list:
            url = (f"http://127.0.0.1:{port}/api/v1/query?query="
                   "sum(anomaly_monitor_images_scored_total%7Bsource%3D%22line1%22%7D)")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return json.loads(resp.read())["data"]["result"]
            except OSError:
                return []

        result = wait_until(query, timeout=30, interval=0.5)
        assert float(result[0]["value"][1]) == len(delivered)
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_bad_image_is_quarantined_and_the_daemon_goes_on(delivered, daemon, samples):
    inbox = daemon.workdir / "inbox"
    (inbox / "broken.png").write_bytes(samples["normal"][0].read_bytes()[:-30])
    shutil.copy(samples["anomaly"][2], inbox / "after_broken.png")
    verdicts = daemon.wait_for_verdicts(len(delivered) + 1)
    assert Path(verdicts[-1]["path"]).name == "after_broken.png"
    reason_files = wait_until(
        lambda: list((daemon.workdir / "var/quarantine/line1").glob("*broken.png.reason.txt")), timeout=10)
    assert "reason: truncated" in reason_files[0].read_text()
    # The counter is raised after the move, so it may trail the reason file by a moment.
    def quarantined() -> float:
        text = scrape(daemon.config["metrics"]["port"])
        try:
            return metric_value(text, "anomaly_monitor_files_quarantined_total", source="line1", reason="truncated")
        except KeyError:
            return 0.0
    assert wait_until(quarantined, timeout=10) == 1


# --- lifecycle: each test below runs its own daemon ------------------------------------------------

def burst_into_inbox(workdir: Path, n: int, seed: int, prefix: str) -> None:
    """`n` normal images written aside, then renamed into the inbox as fast as possible."""
    rng = np.random.default_rng(seed)
    write_images(workdir / "staging", [normal_image(rng) for _ in range(n)], prefix=prefix)
    for src in sorted((workdir / "staging").iterdir()):
        src.rename(workdir / "inbox" / src.name)


def test_restart_scores_what_arrived_while_down_and_nothing_twice(tmp_path, tiny_bundle, subprocess_env, samples):
    proc = DaemonProcess(tmp_path, daemon_config(tiny_bundle), subprocess_env)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for src in samples["normal"][:2]:
        shutil.copy(src, inbox)
    try:
        proc.start()
        proc.wait_for_verdicts(2)
        assert proc.terminate() == 0
        for src in samples["normal"][2:4] + samples["anomaly"][:1]:
            shutil.copy(src, inbox)  # arrives while the daemon is down
        proc.start()
        proc.wait_for_verdicts(5)
        time.sleep(1.0)  # give a wrong second scoring of the first files time to show
        names = [Path(v["path"]).name for v in proc.verdicts()]
        assert sorted(names) == sorted(p.name for p in samples["normal"][:4] + samples["anomaly"][:1])
        assert len(names) == len(set(names))
    finally:
        proc.kill()


def test_sigterm_finishes_queued_images_and_exits_zero(tmp_path, tiny_bundle, subprocess_env):
    config = daemon_config(tiny_bundle, batching={"max_batch": 4, "max_wait_ms": 20, "queue_size": 8})
    proc = DaemonProcess(tmp_path, config, subprocess_env)
    proc.start()
    try:
        burst_into_inbox(tmp_path, 40, seed=5, prefix="burst")
        wait_until(lambda: len(proc.verdicts()) >= 1, timeout=30, interval=0.01)
        start = time.monotonic()
        rc = proc.terminate(signal.SIGTERM)
        stopped_in = time.monotonic() - start
        assert rc == 0
        assert stopped_in < 15
        records = proc.records()
        assert records[-1]["event"] == "daemon_stop"
        first_run = {Path(v["path"]).name for v in proc.verdicts()}
        # What was not scored before the stop is scored after the restart, and only that.
        proc.start()
        proc.wait_for_verdicts(40, timeout=60)
        names = [Path(v["path"]).name for v in proc.verdicts()]
        assert len(names) == 40 == len(set(names))
        assert first_run <= set(names)
    finally:
        proc.kill()


def test_sigkill_loses_no_verdict(tmp_path, tiny_bundle, subprocess_env):
    proc = DaemonProcess(tmp_path, daemon_config(tiny_bundle), subprocess_env)
    proc.start()
    try:
        burst_into_inbox(tmp_path, 30, seed=6, prefix="k")
        wait_until(lambda: len(proc.verdicts()) >= 1, timeout=30, interval=0.01)
        proc.kill()
        proc.start()
        proc.wait_for_verdicts(30, timeout=60)
        time.sleep(1.0)  # give a wrong second scoring time to show
        names = [Path(v["path"]).name for v in proc.verdicts()]
        assert sorted(names) == [f"k{i:04d}.png" for i in range(30)]  # each once: none lost, none twice
    finally:
        proc.kill()


def test_a_bad_config_exits_2_naming_the_key(tmp_path, subprocess_env):
    config = tmp_path / "config.yaml"
    config.write_text("sources: [{name: a, folder: in}]\nbatching: {max_batch: 0}\n")
    res = subprocess.run([sys.executable, "-m", "monitor", "run", "--config", str(config)], capture_output=True,
                         text=True, env=subprocess_env, timeout=60)
    assert res.returncode == 2
    assert f"{config}: batching.max_batch:" in res.stderr


def test_a_missing_bundle_exits_2_with_a_reason(tmp_path, subprocess_env):
    config = tmp_path / "config.yaml"
    config.write_text("model: no_such_bundle\nsources: [{name: a, folder: in}]\nmetrics: {enabled: false}\n")
    res = subprocess.run([sys.executable, "-m", "monitor", "run", "--config", str(config)], capture_output=True,
                         text=True, env=subprocess_env, timeout=120)
    assert res.returncode == 2
    assert "no_such_bundle" in res.stderr


def test_a_busy_metrics_port_exits_1_with_the_reason(tmp_path, tiny_bundle, subprocess_env):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = daemon_config(tiny_bundle, metrics={"host": "127.0.0.1", "port": busy.getsockname()[1]})
        proc = DaemonProcess(tmp_path, config, subprocess_env)
        proc.start(wait_ready=False)
        rc = proc.proc.wait(120)
    assert rc == 1
    assert "Address already in use" in proc.log()
