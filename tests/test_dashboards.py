"""The Grafana dashboard and the Prometheus rules use only metrics the daemon exports, the rules load and
behave, and every dashboard expression returns data from a real Prometheus scraping one line or two."""

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from monitor import metrics

REPO = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\banomaly_monitor_[a-z_]+\b")
SELECTOR = re.compile(r"\b(anomaly_monitor_[a-z_]+)(\{[^}]*\})?")
DASHBOARD = REPO / "dashboards" / "anomaly-monitor.json"


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def exported_series() -> set[str]:
    """Every series name the registry can expose (histograms with _bucket/_sum/_count, counters with _total)."""
    names = set()
    for metric in metrics.REGISTRY.collect():
        names.add(metric.name)
        for suffix in ("_total", "_bucket", "_sum", "_count", "_info"):
            names.add(metric.name + suffix)
    return names


def test_dashboard_queries_use_only_exported_metrics():
    used = {n for e in dashboard_exprs() for n in NAME.findall(e)}
    assert len(used) >= 15
    assert used <= exported_series(), used - exported_series()


def test_alert_rules_use_only_exported_metrics():
    used = set(NAME.findall((REPO / "dashboards" / "alert-rules.yml").read_text()))
    assert used and used <= exported_series(), used - exported_series()


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/install-system-deps.sh"
    res = subprocess.run([promtool, "check", "rules", str(REPO / "dashboards" / "alert-rules.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 7 rules found" in res.stdout


def test_source_down_rule_fires_on_a_camera_that_stays_down(tmp_path):
    promtool = shutil.which("promtool")
    tests = tmp_path / "rules_test.yml"
    tests.write_text(f"""
rule_files: ['{REPO / "dashboards" / "alert-rules.yml"}']
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'anomaly_monitor_source_up{{source="cam1"}}'
        values: '1 1 0 0 0 0 0 0 0'
      - series: 'anomaly_monitor_alert_outbox_size'
        values: '3x20'
      - series: 'anomaly_monitor_alerts_sent_total{{sink="chat"}}'
        values: '5x20'
    alert_rule_test:
      - eval_time: 4m
        alertname: AnomalyMonitorSourceDown
        exp_alerts: []
      - eval_time: 8m
        alertname: AnomalyMonitorSourceDown
        exp_alerts:
          - exp_labels: {{severity: warning, source: cam1}}
            exp_annotations:
              summary: "Camera cam1 has delivered no frame for 5 minutes"
      - eval_time: 20m
        alertname: AnomalyMonitorAlertsFailing
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: "Alerts wait in the outbox and none were delivered for 15 minutes"
""")
    res = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_alert_rule_tests_pass_promtool():
    # Threshold drift fires outside 0.5..2 held for 30 minutes only; undelivered alerts fire per daemon.
    res = subprocess.run([shutil.which("promtool"), "test", "rules", str(REPO / "dashboards" / "alert-rules.test.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_dashboard_selector_is_filtered_by_line_and_instance_and_source():
    labelled_by_source = {m.name for m in metrics.REGISTRY.collect()
                          if any("source" in s.labels for s in m.samples)}
    for expr in dashboard_exprs():
        for name, labels in SELECTOR.findall(expr):
            assert 'line=~"$line"' in labels and 'instance=~"$instance"' in labels, (name, expr)
            base = re.sub(r"_(total|bucket|sum|count)$", "", name)
            if base in labelled_by_source or name in labelled_by_source:
                assert 'source=~"$source"' in labels, (name, expr)


# --- a real Prometheus, configured as deploy/prometheus, scraping two daemons (two lines) --------------------

LINES = ("line-a", "line-b")


def prometheus_query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def grafana(expr: str, line: str = ".*", instance: str = ".*") -> str:
    """The expression as Grafana sends it with these variable values (All is `.*`)."""
    return expr.replace("$line", line).replace("$instance", instance).replace("$source", ".*")


def label_one_anomaly(port: int, records: list[dict]) -> None:
    """Label the first anomaly of a daemon's journal `defect` through its review API, as an operator would."""
    vid = next(r["id"] for r in records if "score" in r and r["anomaly"] and r.get("id"))
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/verdicts/{vid}/label", method="POST",
                                     data=json.dumps({"label": "defect"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, tiny_bundle, subprocess_env):
    """Two daemons (a folder and a looping camera each, a command alert sink), scraped by one Prometheus."""
    from daemon_proc import DaemonProcess, free_port, wait_until
    from imagegen import anomalous_image, normal_image, write_images
    from streams import write_video

    root = tmp_path_factory.mktemp("fleet")
    rng = np.random.default_rng(12)
    video = write_video(root / "line.avi", [normal_image(rng) for _ in range(20)], fps=10)
    daemons = []
    for line in LINES:
        config = {
            "model": str(tiny_bundle),
            "sources": [{"name": "parts", "folder": "inbox", "settle_ms": 20, "stable_s": 0.5,
                         "incomplete_timeout_s": 1},
                        {"name": "cam", "camera": str(video), "fps": 2, "loop": True}],
            "batching": {"max_batch": 8, "max_wait_ms": 20},
            "metrics": {"host": "127.0.0.1", "port": free_port()},
            "alerts": {"sinks": [{"type": "command", "name": "hook", "argv": ["true"], "cooldown_s": 0}]},
        }
        daemons.append(DaemonProcess(root / line, config, subprocess_env))
    prom_port = free_port()
    targets = root / "targets"
    targets.mkdir()
    (targets / "lines.yml").write_text(yaml.safe_dump([
        {"targets": [f"127.0.0.1:{d.config['metrics']['port']}"], "labels": {"line": line}}
        for d, line in zip(daemons, LINES, strict=True)]))
    conf = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    conf["global"].update(scrape_interval="1s", evaluation_interval="1s")
    conf["rule_files"] = [str(REPO / "dashboards" / "alert-rules.yml")]
    conf.pop("alerting")  # no Alertmanager here: its absence would only fill the log
    conf["scrape_configs"][0]["scrape_timeout"] = "1s"
    conf["scrape_configs"][0]["file_sd_configs"][0].update(files=[str(targets / "*.yml")], refresh_interval="1s")
    (root / "prometheus.yml").write_text(yaml.safe_dump(conf))
    prometheus = subprocess.Popen(
        [shutil.which("prometheus"), f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for d in daemons:
            d.start(wait_ready=False)  # both at once: their TensorFlow imports overlap
        wait_until(lambda: all(len([r for r in d.records() if r.get("event") == "daemon_start"]) for d in daemons),
                   timeout=120, interval=0.5)
        for d in daemons:
            good = write_images(d.workdir / "inbox", [normal_image(rng) for _ in range(4)], prefix="good")
            write_images(d.workdir / "inbox", [anomalous_image(rng) for _ in range(2)], prefix="bad")
            (d.workdir / "inbox" / "notes.txt").write_text("not an image")
            (d.workdir / "inbox" / "cut.png").write_bytes(good[0].read_bytes()[:-30])

        def settled() -> bool:
            # An alert delivered and a file quarantined on both lines: the last series to appear.
            try:
                return all(len(prometheus_query(prom_port, f"count by (line) ({name})")) == 2 for name in
                           ("anomaly_monitor_alerts_sent_total", "anomaly_monitor_files_quarantined_total"))
            except OSError:
                return False

        wait_until(settled, timeout=90, interval=0.5)
        for d in daemons:  # the labelled-precision gauge has a series only once a source has a labelled anomaly
            label_one_anomaly(d.config["metrics"]["port"], d.records())
        wait_until(lambda: len(prometheus_query(prom_port, "count by (line) (anomaly_monitor_labelled_precision)"))
                   == 2, timeout=30, interval=0.5)
        time.sleep(3)  # rate() needs two samples of every series: scrapes are 1 s apart
        yield prom_port, daemons
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        for d in daemons:
            d.kill()


@pytest.mark.slow
def test_every_dashboard_expression_returns_data_for_each_line_and_for_both(fleet):
    port, daemons = fleet
    missing = []
    for expr in dashboard_exprs():
        both = prometheus_query(port, grafana(expr))
        if {r["metric"].get("line") for r in both} != set(LINES):
            missing.append(("both", expr, both))
        for line, daemon in zip(LINES, daemons, strict=True):
            instance = f"127.0.0.1:{daemon.config['metrics']['port']}"
            for query in (grafana(expr, line=line), grafana(expr, instance=instance)):
                result = prometheus_query(port, query)
                if not result or {r["metric"].get("line") for r in result} != {line}:
                    missing.append((line, query, result))
    assert not missing, "\n".join(map(str, missing))


@pytest.mark.slow
def test_the_label_panels_show_each_lines_label(fleet):
    # One `defect` label per line (the fixture's): counted per day, and a precision of 1 where it is the only one.
    port, _ = fleet
    exprs = {p["title"]: p["targets"][0]["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    per_day = prometheus_query(port, grafana(exprs["Labels per day by label"]))
    defects = dict.fromkeys(LINES, 0.0)
    for r in per_day:
        if r["metric"]["label"] == "defect":
            defects[r["metric"]["line"]] += float(r["value"][1])
    assert set(defects) == set(LINES) and all(v >= 0.5 for v in defects.values()), per_day
    others = [float(r["value"][1]) for r in per_day if r["metric"]["label"] != "defect"]
    assert others and all(v == 0 for v in others)  # the other labels' counters exist from the start, at 0
    precision = prometheus_query(port, grafana(exprs["Labelled precision"]))
    assert {r["metric"]["line"]: float(r["value"][1]) for r in precision} == {line: 1.0 for line in LINES}


@pytest.mark.slow
def test_dashboard_variables_list_both_lines_and_their_daemons(fleet):
    port, daemons = fleet
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    # label_values(METRIC, LABEL) is Grafana's series query: the metric's series must carry the label.
    for name, label in (("line", "line"), ("instance", "instance"), ("source", "source")):
        metric, = re.findall(r"label_values\((.+), \w+\)$", variables[name]["query"])
        values = {r["metric"][label] for r in prometheus_query(port, grafana(metric))}
        expected = {"line": set(LINES), "instance": {f"127.0.0.1:{d.config['metrics']['port']}" for d in daemons},
                    "source": {"parts", "cam"}}[name]
        assert values == expected, name


@pytest.mark.slow
def test_the_exposition_of_a_daemon_with_every_kind_of_source_and_a_sink_passes_promtool_lint(fleet):
    # tests/test_daemon_e2e.py lints a folder-only daemon; this one also has camera, alert and build series.
    _, daemons = fleet
    with urllib.request.urlopen(f"http://127.0.0.1:{daemons[0].config['metrics']['port']}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "anomaly_monitor_frames_read_total" in text and "anomaly_monitor_alerts_sent_total" in text
    res = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr
