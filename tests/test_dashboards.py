"""The Grafana dashboard and the Prometheus rules use only metrics the daemon exports, and the rules load."""

import json
import re
import shutil
import subprocess
from pathlib import Path

from monitor import metrics

REPO = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\banomaly_monitor_[a-z_]+\b")


def exported_series() -> set[str]:
    """Every series name the registry can expose (histograms with _bucket/_sum/_count, counters with _total)."""
    names = set()
    for metric in metrics.REGISTRY.collect():
        names.add(metric.name)
        for suffix in ("_total", "_bucket", "_sum", "_count", "_info"):
            names.add(metric.name + suffix)
    return names


def test_dashboard_queries_use_only_exported_metrics():
    dashboard = json.loads((REPO / "dashboards" / "anomaly-monitor.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in NAME.findall(e)}
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
    assert "SUCCESS: 6 rules found" in res.stdout


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
